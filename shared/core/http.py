"""One pooled HTTP session per process, and the one place where `requests` failures become typed errors
(with every URL's query string cut off). Why: docs/design.md, "HTTP: retries and secrets in URLs"."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.core import metrics
from shared.core.errors import APIConnectionError, InvalidRequestError, RateLimitError, foreign
from shared.core.settings import Settings

USER_AGENT = "stockout-sync/0.1"
POOL_MAXSIZE = 32
DEFAULT_TIMEOUT = (5.0, 30.0)

# a URL query string inside free text: everything from "?" up to whitespace or a quote/bracket
_QUERY_IN_TEXT = re.compile(r"\?[^\s'\")\]>]*")


class TimeoutSession(requests.Session):
    """A Session that applies a default `(connect, read)` timeout to every request.

    `requests` has no session-wide timeout and waits forever without one; a hung gateway would pin
    a worker process until the Celery hard time limit kills it.
    """

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.timeout = timeout
        self._environment: dict[tuple, dict[str, Any]] = {}

    # **kwargs stands for requests' two dozen keyword parameters, hence the override ignore
    def request(self, method: str, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(method, url, **kwargs)

    def merge_environment_settings(
        self, url: str, proxies: dict[str, str] | None, stream: bool | None, verify: bool | str | None, cert: Any
    ) -> dict[str, Any]:
        # requests scans the whole environment (proxy variables, no_proxy, CA bundle) on every call,
        # about a fifth of a save's CPU. A process's environment does not change while it runs, so
        # the answer is kept per scheme and host (what no_proxy matching depends on).
        if proxies or not self.trust_env:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify, cert)
        try:
            merged = self._environment.get(key)
        except TypeError:  # an unhashable cert (a list): not worth keeping
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        if merged is None:
            merged = self._environment[key] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        return {**merged, "proxies": dict(merged["proxies"])}


def make_session(settings: Settings) -> requests.Session:
    session = TimeoutSession((settings.http_connect_timeout_s, settings.http_read_timeout_s))
    # total=0/read=False: urllib3 must not resend a request on its own (a resent save is a second
    # save attempt the task never knew about); redirects stay with requests.
    adapter = HTTPAdapter(
        pool_connections=4,
        pool_maxsize=POOL_MAXSIZE,
        max_retries=Retry(total=0, connect=0, read=False, redirect=False, status=0, raise_on_status=False),
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.verify = True
    session.headers["User-Agent"] = USER_AGENT
    return session


def safe_url(url: str) -> str:
    """scheme://host/path only: the query string may hold a token or a signature."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub_urls(text: str) -> str:
    return _QUERY_IN_TEXT.sub("?…", text)


@dataclass(frozen=True)
class JsonResponse:
    status: int
    data: Any
    url: str  # already made safe: no query string


def request_json(
    session: requests.Session,
    method: str,
    url: str,
    *,
    api: str,
    failure_code: Callable[[Any], str] = lambda data: "",
    numbers_as_text: bool = False,
    **kwargs: Any,
) -> JsonResponse:
    """Send one request and return the decoded JSON body.

    Raises APIConnectionError (should_retry=True) on network errors, timeouts, HTTP ≥ 500, 408 and
    bodies that are not JSON; RateLimitError on HTTP 429; InvalidRequestError on any other 4xx
    without a JSON body. A 4xx *with* a JSON body is returned: both APIs put their own error code
    in it, and the client's envelope parser knows better what it means. `failure_code` is that API's
    reading of a body ("" for a success), for the calls' metric: each API's own code table, not ours.
    """
    where = safe_url(url)
    if kwargs.get("timeout") is None and not isinstance(session, TimeoutSession):
        kwargs["timeout"] = DEFAULT_TIMEOUT  # a caller's plain Session must not wait forever either
    started = time.monotonic()
    started_at = time.time()

    def observe(code: str) -> None:
        metrics.observe_api_call(api, url, kwargs.get("data"), time.monotonic() - started, code)

    try:
        response = session.request(method, url, **kwargs)
    except requests.RequestException as exc:
        observe("timeout" if isinstance(exc, requests.Timeout) else "connection_error")
        # requests' own words name the host and the reason (refused, DNS…), with any URL's secrets scrubbed
        raise foreign(exc, api=api, where=f"{api} {method} {where}", detail=scrub_urls(str(exc))) or exc from None

    status = response.status_code
    _note_server_clock(api, response.headers.get("Date"), started_at, time.time())
    if status >= 500 or status == 408 or status == 429:
        observe(f"http_{status}")
    if status >= 500 or status == 408:
        raise APIConnectionError(f"{api} {method} {where}: HTTP {status}", api=api, http_status=status)
    if status == 429:
        raise RateLimitError(
            f"{api} {method} {where}: HTTP 429 too many requests",
            api=api,
            http_status=status,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )
    try:
        data = (response.json(parse_float=str, parse_int=_int_or_text, parse_constant=str) if numbers_as_text
                else response.json())
    except (ValueError, json.JSONDecodeError):
        observe(f"http_{status}" if status >= 400 else "not_json")
        if status >= 400:
            raise InvalidRequestError(
                f"{api} {method} {where}: HTTP {status}", api=api, http_status=status
            ) from None
        raise APIConnectionError(
            f"{api} {method} {where}: HTTP {status} with a body that is not JSON",
            api=api,
            http_status=status,
        ) from None
    observe(failure_code(data) or ("ok" if status < 400 else f"http_{status}"))
    return JsonResponse(status=status, data=data, url=where)


# api → this host's clock minus the server's, from the HTTP `Date` of its last answer (1 s resolution):
# a second opinion beside Redis TIME on whose clock is wrong (shared.observe.clock reads it).
SERVER_SKEW_S: dict[str, float] = {}


def _note_server_clock(api: str, date: str | None, sent: float, received: float) -> None:
    try:
        server = parsedate_to_datetime(date).timestamp() if date else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return  # a missing or odd header says nothing about clocks
    if server is not None:
        # the server's second was cut off: its middle is the best guess of when it answered
        SERVER_SKEW_S[api] = round((sent + received) / 2 - (server + 0.5), 1)


def _int_or_text(text: str) -> int | str:
    # a code or a count is an int; a run of digits longer than any is text (and never int()'s cost)
    return int(text) if len(text) <= 18 else text


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
