"""The 旺店通 requestor: `wdt.stockout.order.query` through the Qimen gateway (protocol: docs/apis.md).
It owns signing, the envelope and the typed error for every failure; it never retries by itself.
Why: docs/design.md, "The WDT client"."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import redis as redis_lib
import requests

from shared.core import metrics
from shared.core.errors import APIConnectionError, InvalidRequestError, Kind, RateLimitError, StockoutSyncError
from shared.core.http import make_session, request_json
from shared.core.settings import Settings
from shared.core.timeutil import format_wire, now_beijing, parse_wire, to_beijing
from shared.redis.ratelimit import RateLimiter
from shared.wdt import errors as codes
from shared.wdt.lookup import Lookup, needs_window, plan
from shared.wdt.paging import MAX_WINDOW, WdtPage, WdtPaginator, slice_range
from shared.wdt.sign import top_md5_sign

log = logging.getLogger("stockout_sync.wdt")

METHOD = "wdt.stockout.order.query"
API = "wdt"
DEFAULT_PAGE_SIZE = 40

__all__ = ["WdtClient", "WdtPage", "slice_range"]


class WdtClient:
    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.session = session or make_session(settings)
        self.limiter = limiter
        self.url = settings.wdt_qimen_url
        self._window_required = False  # this gateway refused a stockout_no query without a window

    @classmethod
    def from_settings(
        cls, settings: Settings, redis: redis_lib.Redis | None = None, *, session: requests.Session | None = None
    ) -> WdtClient:
        limiter = None
        if redis is not None:
            limiter = RateLimiter(
                redis, "wdt", settings.wdt_rate_per_minute / 60.0, burst=1, prefix=settings.redis_prefix,
                observer=metrics.LIMITER_OBSERVER,
            )
        return cls(settings, session=session, limiter=limiter)

    def __repr__(self) -> str:
        return f"WdtClient(url={self.url!r}, app_key={self.settings.wdt_app_key!r}, sid={self.settings.wdt_sid!r})"

    # the requestor ------------------------------------------------------------------------------

    def _system_params(self) -> dict[str, str]:
        s = self.settings
        return {
            "method": METHOD,
            "app_key": s.wdt_app_key,
            "target_app_key": s.wdt_target_app_key,
            "sid": s.wdt_sid,
            # Beijing time from an aware clock: the host's TZ never enters (invariant 5)
            "timestamp": format_wire(now_beijing()),
            "format": "json",
            "v": "2.0",
            "sign_method": "md5",
        }

    def signed_params(self, business: dict[str, Any]) -> dict[str, str]:
        params = self._system_params()
        for key, value in business.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple, set)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, datetime):
                value = format_wire(value)
            value = str(value)
            if value != "":  # the signature skips empty values; the form must match it
                params[key] = value
        params["sign"] = top_md5_sign(params, self.settings.wdt_app_secret.get_secret_value())
        return params

    def request(self, business: dict[str, Any]) -> dict[str, Any]:
        """One signed call; the body of a successful reply (the object inside `response`)."""
        if self.limiter is not None:
            self.limiter.acquire()
        params = self.signed_params(business)
        try:
            reply = request_json(self.session, "POST", self.url, api=API, failure_code=codes.code_of, data=params,
                                 numbers_as_text=True)
        except RateLimitError as exc:  # HTTP 429: the same wait as WDT's own 1012
            if self.limiter is not None:
                exc.retry_after = max(exc.retry_after or 0.0, self.limiter.refused())
            raise
        body = self._unwrap(reply.data, reply.url)
        failure = codes.failure_of(body)
        if failure is not None:
            error = self._error(failure, reply.url, reply.status)
            if error.kind is Kind.RATE_LIMITED:
                # the shared rate comes down for every process; come back no sooner than its next slot
                next_slot = (self.limiter.refused() if self.limiter is not None
                             else max(10.0, 60.0 / self.settings.wdt_rate_per_minute))  # no shared limiter: be patient
                error.retry_after = max(error.retry_after or 0.0, next_slot)
            raise error
        if reply.status >= 400:
            raise InvalidRequestError(f"wdt {METHOD}: HTTP {reply.status}", api=API, http_status=reply.status)
        return body

    @staticmethod
    def _unwrap(data: Any, where: str) -> dict[str, Any]:
        inner = codes.unwrap(data)
        if isinstance(inner, dict):
            return inner
        raise APIConnectionError(
            f"wdt {METHOD} {where}: reply is {type(data).__name__}, not an object", api=API
        )

    def _scrub(self, text: str) -> str:
        secret = self.settings.wdt_app_secret.get_secret_value()
        return text.replace(secret, "***") if secret else text

    def _error(self, f: dict[str, str], where: str, status: int) -> StockoutSyncError:
        code, sub_code = f["code"], f["sub_code"]
        api_message = self._scrub(" / ".join(m for m in (f["message"], f["sub_code"], f["sub_message"]) if m))
        said = f"wdt {METHOD} {where}: code={code or '-'}{' sub_code=' + sub_code if sub_code else ''} {api_message}"
        kind = codes.kind_of(code, sub_code)
        retry_after = codes.retry_after_of(f) if kind is Kind.RATE_LIMITED else None
        return codes.error(kind, said, code=code, sub_code=sub_code, api_message=api_message, http_status=status,
                           retry_after=retry_after)

    # queries ------------------------------------------------------------------------------------

    def _page_size(self, page_size: int | None) -> int:
        size = self.settings.wdt_page_size if page_size is None else page_size
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 100:
            raise InvalidRequestError(f"wdt page_size must be 1–100, got {size!r}", api=API)
        return size

    @staticmethod
    def _check_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
        start, end = to_beijing(start), to_beijing(end)
        if start > end:
            raise InvalidRequestError(
                f"wdt window start {format_wire(start)} is after end {format_wire(end)}", api=API
            )
        if end.replace(microsecond=0) - start.replace(microsecond=0) > MAX_WINDOW:
            raise InvalidRequestError(
                f"wdt window {format_wire(start)} – {format_wire(end)} spans more than 30 days", api=API
            )
        return start, end

    def query_page(
        self,
        start: datetime,
        end: datetime,
        page_no: int,
        page_size: int | None = None,
        **filters: Any,
    ) -> WdtPage:
        start, end = self._check_window(start, end)
        size = self._page_size(page_size)
        if page_no < 0:
            raise InvalidRequestError(f"wdt page_no must be ≥ 0, got {page_no}", api=API)
        business = {"start_time": start, "end_time": end, "page_no": page_no, "page_size": size, **filters}
        return self._page(self.request(business), page_no, size)

    @staticmethod
    def _page(body: dict[str, Any], page_no: int, size: int) -> WdtPage:
        total = body.get("total_count")
        try:
            total_count = None if total in (None, "") else int(str(total).strip())
        except ValueError:
            raise APIConnectionError(f"wdt {METHOD}: total_count {total!r} is not a number", api=API) from None
        records = body.get("stockout_list")
        if records in (None, ""):
            records = []
        if not isinstance(records, list):
            raise APIConnectionError(
                f"wdt {METHOD}: stockout_list is {type(records).__name__}, not a list", api=API
            )
        return WdtPage(page_no=page_no, page_size=size, total_count=total_count, stockouts=records)

    def iter_pages(
        self, start: datetime, end: datetime, page_size: int | None = None, *,
        fetch: Callable[[Callable[[], WdtPage]], WdtPage] | None = None, reread_first: bool = True, **filters: Any,
    ) -> Iterator[WdtPage]:
        """Every page of one window, one at a time, in the order that cannot miss a stockout moved by
        an edit (paging.py). Records an earlier page already yielded are dropped from later pages
        (counted in `page.rereads`), so each stockout_id comes out once per call.

        `fetch` runs each page's request; the caller passes one that retries, so a failed page is
        asked again on its own instead of the whole window from the start."""
        start, end = self._check_window(start, end)
        size = self._page_size(page_size)
        paginator = WdtPaginator(size, reread_first=reread_first)
        seen: set[str] = set()  # ids only: the window itself is never held
        while (page_no := paginator.next_page_no) is not None:  # None once finished
            call = functools.partial(self.query_page, start, end, page_no, size, **filters)
            page = fetch(call) if fetch else call()
            paginator.advance(page)
            fresh: list[dict[str, Any]] = []
            for record in page.stockouts:
                sid = record.get("stockout_id") if isinstance(record, dict) else None
                if sid not in (None, ""):
                    if str(sid) in seen:
                        continue
                    seen.add(str(sid))
                fresh.append(record)
            rereads = len(page.stockouts) - len(fresh)
            yield page.model_copy(update={"stockouts": fresh, "rereads": rereads})

    def find_by_no(
        self, stockout_no: str, *, near: Iterable[datetime] = (), status: str = "", horizon_days: int | None = None,
        now: datetime | None = None,
    ) -> Lookup:
        """The stockout with this number, in WDT's default statuses (95, 110) unless `status` names
        another: one call per question of `lookup.plan` until one finds it. `near`: times we know of
        the order (modified, consigned), asked first. The number alone is asked once per client and
        its answer, found or not, is the answer; a gateway that refuses it (any parameter error about
        the times) is asked with windows only, from then on."""
        found = Lookup(stockout_no, horizon_days or self.settings.wdt_lookup_horizon_days)
        query = {"stockout_no": stockout_no, **({"status": status} if status else {})}
        for window in plan(near, now or now_beijing(), found.horizon_days):
            if window is None and self._window_required:
                found.window_required = True
                continue
            found.asked.append(window)
            try:
                page = (self._page(self.request({**query, "page_no": 0, "page_size": 100}), 0, 100) if window is None
                        else self.query_page(window[0], window[1], 0, 100, **query))
            except StockoutSyncError as err:
                if window is None and needs_window(err):
                    found.window_required = self._window_required = True
                    continue
                found.error = err
                return found
            found.record = self._match(page, stockout_no)
            if found.record is not None or window is None:  # the number alone answered: of any age
                return found
        return found

    @staticmethod
    def _match(page: WdtPage, stockout_no: str) -> dict[str, Any] | None:
        for record in page.stockouts:
            # match on our side too: a gateway that ignored the filter must not hand back another order
            if isinstance(record, dict) and stockout_no in (
                str(record.get("order_no", "")),
                str(record.get("stockout_no", "")),
            ):
                return record
        return None

    slice_range = staticmethod(slice_range)


def modified_of(record: dict[str, Any]) -> datetime | None:
    """A raw record's last-modified time, for the producer's cursor."""
    try:
        return parse_wire(str(record.get("modified") or ""))
    except ValueError:
        return None

