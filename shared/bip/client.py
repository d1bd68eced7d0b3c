"""The 用友BIP requestor: other outbound record save, list and detail (protocol: docs/apis.md).
It owns the token as a query parameter, the `{"code", "message", "data"}` envelope and a typed error
per BIP code; a replay or a duplicate is success. Why: docs/design.md, "The BIP client and de-duplication"."""
from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterator
from typing import Any

import redis as redis_lib
import requests

from shared.bip import errors as codes
from shared.bip import lookup
from shared.bip.errors import API, code_of, message_of
from shared.bip.models import DEFINE1, OthOutRecord, SaveResult, define1_of
from shared.bip.paging import LIST_PATH, BipListPaginator
from shared.bip.token import GatewayResolver, TokenProvider
from shared.core import metrics
from shared.core.errors import APIConnectionError, InvalidRequestError, Kind, RateLimitError, StockoutSyncError
from shared.core.http import make_session, request_json
from shared.core.settings import Settings
from shared.redis.ratelimit import RateLimiter

log = logging.getLogger("stockout_sync.bip")

SAVE_PATH = "/yonbip/scm/othoutrecord/single/save"
DETAIL_PATH = "/yonbip/scm/othoutrecord/detail"
NOT_FOUND_CODE = "1002"

_DUPLICATE_CODE_WORDS = ("已存在", "重复")
_SECONDS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:s\b|seconds?|秒)", re.I)


class BipClient:
    def __init__(
        self,
        settings: Settings,
        redis: redis_lib.Redis,
        *,
        session: requests.Session | None = None,
        limiter: RateLimiter | None = None,
        tokens: TokenProvider | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.session = session or make_session(settings)
        self.limiter = limiter
        self.tokens = tokens or TokenProvider(
            settings, redis, self.session, resolver=GatewayResolver(settings, redis, self.session)
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, redis: redis_lib.Redis, *, session: requests.Session | None = None
    ) -> BipClient:
        limiter = RateLimiter(redis, "bip", settings.bip_rate_per_second, burst=1, prefix=settings.redis_prefix,
                              observer=metrics.LIMITER_OBSERVER)
        return cls(settings, redis, session=session, limiter=limiter)

    def __repr__(self) -> str:
        return f"BipClient(tenant={self.settings.bip_tenant_id!r}, app_key={self.settings.bip_app_key!r})"

    # the requestor ------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> dict[str, Any]:
        """One gateway call; the whole envelope of a reply whose code is not an error.

        Replies with a "duplicate submission" code are returned too (the caller decides)."""
        token = self.tokens.get()
        body = self._send(method, path, token, json=json, params=params)
        if codes.kind_of(code_of(body)) is Kind.TOKEN_EXPIRED:
            # the token died before its time (revoked, or another app session replaced it)
            self.tokens.invalidate(token)
            token = self.tokens.get()
            body = self._send(method, path, token, json=json, params=params)
            if codes.kind_of(code_of(body)) is Kind.TOKEN_EXPIRED:
                raise codes.error(
                    Kind.TOKEN_EXPIRED,
                    f"bip {method} {path}: token refused again right after renewal (code={code_of(body)})",
                    code=code_of(body), api_message=self._scrub(message_of(body), token),
                )
        if codes.kind_of(code_of(body)) in (Kind.SUCCESS, Kind.DUPLICATE):
            return body
        raise self._error(method, path, body, token)

    def _send(self, method: str, path: str, token: str, *, json: Any, params: dict | None) -> dict[str, Any]:
        if self.limiter is not None:
            self.limiter.acquire()
        url = self.tokens.endpoints().gateway_url + path
        query = dict(params or {})
        query["access_token"] = token
        try:
            reply = request_json(self.session, method, url, api=API, failure_code=codes.failure_code,
                                 params=query, json=json)
        except RateLimitError as exc:  # HTTP 429: the same wait as BIP's own rate codes
            if self.limiter is not None:
                exc.retry_after = max(exc.retry_after or 0.0, self.limiter.refused())
            raise
        if not isinstance(reply.data, dict):
            raise APIConnectionError(
                f"bip {method} {path}: reply is {type(reply.data).__name__}, not an object",
                api=API,
                http_status=reply.status,
            )
        code = code_of(reply.data)
        if reply.status >= 400 and (not code or codes.kind_of(code) is Kind.SUCCESS):
            raise InvalidRequestError(f"bip {method} {path}: HTTP {reply.status}", api=API, http_status=reply.status)
        return reply.data

    def _scrub(self, text: str, token: str | None) -> str:
        if token:
            text = text.replace(token, "***")
        secret = self.settings.bip_app_secret.get_secret_value()
        return text.replace(secret, "***") if secret else text

    def _error(self, method: str, path: str, body: dict[str, Any], token: str | None) -> StockoutSyncError:
        code, message = code_of(body), self._scrub(message_of(body), token)
        kind = codes.kind_of(code)
        said = f"bip {method} {path}: code={code or '-'} {message}".rstrip()
        retry_after = None
        if kind is Kind.RATE_LIMITED:
            match = _SECONDS.search(message)
            retry_after = float(match.group(1)) if match else None
            # the shared rate comes down for every process; come back no sooner than its next slot
            next_slot = self.limiter.refused() if self.limiter is not None else 1.0  # no shared limiter: a second
            retry_after = max(retry_after or 0.0, next_slot)
        # 310008/310015/310023 parameters, 999 business validation (BIP's words name the field and
        # value), 1002 not found, and any code we do not know: refused content, not retried
        return codes.error(kind, said, code=code, api_message=message, retry_after=retry_after)

    # other outbound records ---------------------------------------------------------------------

    def save(self, record: OthOutRecord, *, keys: Collection[str] = ()) -> SaveResult:
        """Save; "code already exists" is our earlier save only when the record holding the code is
        this stockout's (its define1, and `keys` or the record's own key where BIP shows one)."""
        try:
            body = self.request("POST", SAVE_PATH, json={"data": record.wire()})
        except InvalidRequestError as exc:
            if exc.code == "999" and record.code and any(w in exc.api_message for w in _DUPLICATE_CODE_WORDS):
                sid = record.define1 or ""
                held = lookup.by_code(self, sid, record.code, {record.resubmitCheckKey, *keys})
                if isinstance(held, lookup.Found):
                    log.info("bip save: code %s already exists, and its record %s is this stockout's: an earlier "
                             "save of ours", record.code, held.id)
                    return SaveResult(id=held.id, code=held.code or record.code, replayed=True)
                if isinstance(held, lookup.Foreign):
                    raise held.error(sid) from None
            raise
        if codes.kind_of(code_of(body)) is Kind.DUPLICATE:
            return self._replayed(record, keys)
        data: dict[str, Any] = body["data"] if isinstance(body.get("data"), dict) else {}
        return SaveResult(id=_str(data.get("id")), code=_str(data.get("code")))

    def _replayed(self, record: OthOutRecord, keys: Collection[str]) -> SaveResult:
        # the gateway only says "saved before"; fill in the id when the code finds this stockout's record
        if record.code:
            try:
                held = lookup.by_code(self, record.define1 or "", record.code, {record.resubmitCheckKey, *keys})
            except StockoutSyncError as exc:
                log.warning("bip save replayed; looking up code %s failed: %s", record.code, exc.message)
                held = "unasked"
            if isinstance(held, lookup.Found):
                return SaveResult(id=held.id, code=held.code, replayed=True)
        return SaveResult(code=record.code or "", replayed=True)

    def detail(self, record_id: str) -> dict[str, Any] | None:
        """The record BIP holds under `record_id`, or None when BIP answers 1002 (not found).

        Only 1002 means absent: every other failure (HTTP 5xx, a timeout, a gateway code) raises its
        typed error, because "could not ask" must never be read as "not there"."""
        if not isinstance(record_id, str) or not record_id.strip():
            raise ValueError(f"record_id must be a non-empty string, got {record_id!r}")
        try:
            body = self.request("GET", DETAIL_PATH, params={"id": record_id})
        except InvalidRequestError as exc:
            if exc.code == NOT_FOUND_CODE:
                return None
            raise
        data = body.get("data")
        if not isinstance(data, dict):
            raise APIConnectionError(f"bip GET {DETAIL_PATH}: reply has no data object", api=API)
        return data

    def find_by_code(self, code: str) -> list[dict[str, Any]]:
        """Records whose document code is exactly `code` (the list API may match loosely)."""
        page = self._list_page(1, 100, code=code)
        return [r for r in page[0] if _str(r.get("code")) == code]

    def find_by_define1(self, stockout_id: str) -> tuple[list[dict[str, Any]], str]:
        """One page of records whose define1 is `stockout_id`, and why the answer cannot be trusted
        ("" when it can): a list that ignores the filter, or rows without define1, cannot tell absent."""
        rows, _ = self._list_page(1, 20, simpleVOs=[{"field": DEFINE1, "op": "eq", "value1": stockout_id}])
        if any(not define1_of(r) for r in rows):
            return [], f"BIP's list rows carry no {DEFINE1}"
        ours = [r for r in rows if define1_of(r) == stockout_id]
        return ours, "" if len(ours) == len(rows) else f"BIP's list ignored the {DEFINE1} filter"

    def find(self, simple_vos: list[dict[str, Any]], page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every record matching `simple_vos` (BIP's filter triples), page by page."""
        pages = BipListPaginator(page_size)
        while not pages.finished:
            records, total = self._list_page(pages.next_page, page_size, simpleVOs=simple_vos)
            pages.advance(records, total)
            yield from records

    def list_page(self, page_index: int, page_size: int, **query: Any) -> tuple[list[dict[str, Any]], int | None]:
        """One page of the list and its recordCount, rows as BIP sent them: the caller checks they
        match the query (a tenant's list may ignore a filter it cannot apply)."""
        return self._list_page(page_index, page_size, **query)

    def _list_page(self, page_index: int, page_size: int, **query: Any) -> tuple[list[dict[str, Any]], int | None]:
        body = {"pageIndex": page_index, "pageSize": page_size, **query}
        reply = self.request("POST", LIST_PATH, json=body)
        data: dict[str, Any] = reply["data"] if isinstance(reply.get("data"), dict) else {}
        records = data.get("recordList") or []
        if not isinstance(records, list):
            raise APIConnectionError(f"bip {LIST_PATH}: recordList is not a list", api=API)
        total = data.get("recordCount")
        try:
            total = None if total in (None, "") else int(total)
        except (TypeError, ValueError):
            total = None
        return [r for r in records if isinstance(r, dict)], total


def _str(value: Any) -> str:
    return "" if value is None else str(value)
