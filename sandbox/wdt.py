"""`wdt.stockout.order.query` behind a fake Taobao Qimen gateway (`/router/qm`).

Strict on purpose: system parameters, the TOP md5 signature, the timestamp skew, the 30-day
window and the page size are all checked, each with the TOP-style code a real gateway answers, so
a client that would be refused in production is refused here.
"""
from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.core.timeutil import BEIJING, WIRE_FORMAT, format_wire, now_beijing
from shared.wdt.sign import top_md5_sign

from .config import SandboxConfig
from .data import FETCHED_STATUSES
from .faults import Counters, Faults, RateLimit, Reply, Request, dumps, html_reply, json_reply, truncated

WDT_PATH = "/router/qm"
METHOD = "wdt.stockout.order.query"
MAX_SPAN = timedelta(days=30)
_WIRE_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_STATUS_RE = re.compile(r"^\d+(,\d+)*$")


class RawRow(dict):
    """A stockout given as JSON text (`add_raw`), served byte for byte: numbers such as `1e3` or
    `1e999999999` reach the client as written. The dict (numbers as their text) serves the filters."""

    text: str


def raw_row(text: str) -> RawRow:
    try:
        parsed = json.loads(text, parse_float=str, parse_int=str, parse_constant=str)
    except ValueError as e:
        raise ValueError(f"a raw stockout must be one JSON object: {e}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"a raw stockout must be one JSON object, got {type(parsed).__name__}")
    row = RawRow(parsed)
    row.text = text
    return row


def page_body(payload: dict[str, Any]) -> bytes:
    """The reply's JSON, raw rows spliced in as they were given."""
    rows = payload["response"].get("stockout_list") or []
    if not any(isinstance(row, RawRow) for row in rows):
        return dumps(payload)
    marker = "\x00stockout_list\x00"
    body = dumps({**payload, "response": {**payload["response"], "stockout_list": marker}})
    listed = ",".join(row.text if isinstance(row, RawRow) else dumps(row).decode() for row in rows)
    return body.replace(dumps(marker), f"[{listed}]".encode())


class WdtError(Exception):
    def __init__(self, code: str, message: str, sub_code: str = "", sub_message: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.sub_code, self.sub_message = code, message, sub_code, sub_message


def failure(code: str, message: str, sub_code: str = "", sub_message: str = "") -> Reply:
    return json_reply({
        "response": {
            "flag": "failure", "code": code, "message": message,
            "sub_code": sub_code, "sub_message": sub_message or message,
        }
    })


def _missing(name: str) -> WdtError:
    return WdtError("40", "Missing required arguments", f"isv.missing-parameter:{name}", f"缺少参数{name}")


def _invalid(name: str, why: str) -> WdtError:
    return WdtError("41", "Invalid arguments", f"isv.invalid-parameter:{name}", f"参数{name}无效: {why}")


def parse_wire_time(name: str, text: str) -> datetime:
    if not _WIRE_RE.match(text):
        raise _invalid(name, f"[{text}] 应为 yyyy-MM-dd HH:mm:ss")
    try:
        return datetime.strptime(text, WIRE_FORMAT).replace(tzinfo=BEIJING)
    except ValueError:
        raise _invalid(name, f"[{text}] 不是有效时间") from None


@dataclass(frozen=True)
class Query:
    start: datetime | None
    end: datetime | None
    page_no: int
    page_size: int
    statuses: frozenset[str]
    exact: tuple[tuple[str, str], ...]  # (field, value) pairs that must match

    def matches(self, modified: datetime, stockout: dict[str, Any]) -> bool:
        if self.start is not None and modified < self.start:
            return False
        if self.end is not None and modified > self.end:
            return False
        if str(stockout.get("status", "")) not in self.statuses:
            return False
        return all(str(stockout.get(name, "")) == value for name, value in self.exact)


# business parameter → stockout field it must equal
_EXACT_FILTERS = {"order_type": "order_type", "warehouse_no": "warehouse_no",
                  "stockout_no": "order_no", "src_order_no": "src_order_no"}


class WdtApi:
    def __init__(self, config: SandboxConfig, counters: Counters, faults: Faults, limit: RateLimit) -> None:
        self.config = config
        self.counters = counters
        self.faults = faults
        self.limit = limit
        self._lock = threading.Lock()
        self._stockouts: dict[str, tuple[datetime, dict[str, Any]]] = {}
        self._ordered: list[tuple[datetime, dict[str, Any]]] | None = None
        self.lookup_needs_window = config.wdt_lookup_needs_window

    # ---- the store (stored dicts are never mutated, so replies serialise outside the lock)

    def add(self, stockouts: list[dict[str, Any]]) -> int:
        entries = [_entry(raw) for raw in stockouts]
        with self._lock:
            for modified, raw in entries:
                # a record with an empty id is still served, stored under its order_no
                self._stockouts[raw["stockout_id"].strip() or f"~{raw['order_no']}"] = (modified, raw)
            self._ordered = None
        return len(entries)

    def add_raw(self, rows: list[str]) -> int:
        """Add or replace stockouts given as JSON text, each served exactly as written."""
        parsed = [raw_row(text) for text in rows]
        if any(not row.get("modified") for row in parsed):
            raise ValueError("a raw stockout needs its `modified` time: it is served as written")
        entries = [_entry(row) for row in parsed]  # a copy of a RawRow is a RawRow with the same text
        with self._lock:
            for modified, raw in entries:
                self._stockouts[raw["stockout_id"].strip() or f"~{raw['order_no']}"] = (modified, raw)
            self._ordered = None
        return len(entries)

    def modify(self, stockout_id: str) -> dict[str, Any]:
        """The stockout edited in WDT just now: it moves to the end of the modified order."""
        now = now_beijing().replace(microsecond=0)
        with self._lock:
            if stockout_id not in self._stockouts:
                raise KeyError(f"no stockout {stockout_id}")
            raw = {**self._stockouts[stockout_id][1], "modified": format_wire(now)}
            self._stockouts[stockout_id] = (now, raw)
            self._ordered = None
        return copy.deepcopy(raw)

    def statuses(self) -> dict[str, str]:
        """Every stockout's id and status: what a caller needs to know which ones a sync must save."""
        with self._lock:
            return {str(raw["stockout_id"]): str(raw.get("status", "")) for _, raw in self._stockouts.values()}

    def stockouts(self) -> list[dict[str, Any]]:
        """Every stockout as stored (its `modified` included), in modified order."""
        with self._lock:
            return [copy.deepcopy(raw) for _, raw in sorted(self._stockouts.values(), key=_order_key)]

    def clear(self) -> None:
        with self._lock:
            self._stockouts.clear()
            self._ordered = None

    # ---- the endpoint

    def handle(self, request: Request) -> Reply:
        self.counters.inc("wdt_calls")
        self.faults.sleep(self.config.wdt_latency_ms / 1000.0 + self.faults.latency_s("wdt"))
        if self.faults.roll("wdt", "http_500"):
            return html_reply(500, "Internal Server Error")
        if self.faults.roll("wdt", "rate_limit"):
            return self._too_frequent()
        if self.faults.roll("wdt", "slow"):
            self.faults.sleep(self.faults.slow_s("wdt"))
        reply = self._answer(request.form())
        if self.faults.roll("wdt", "malformed_json"):
            return truncated(reply)
        return reply

    def _answer(self, params: dict[str, str]) -> Reply:
        try:
            self._check_system(params)
            if not self.limit.allow():
                return self._too_frequent()
            query = parse_query(params, lookup_needs_window=self.lookup_needs_window)
        except WdtError as e:
            self.counters.inc("wdt_errors")
            return failure(e.code, e.message, e.sub_code, e.sub_message)
        return self._reply(query)

    def _reply(self, query: Query) -> Reply:
        """The page a checked, signed query asks for (a benchmark's virtual feed replaces this)."""
        return Reply(200, page_body(self._page(query)))

    def _too_frequent(self) -> Reply:
        self.counters.inc("wdt_rate_limited")
        return failure("1012", "调用太频繁", "isv.call-limited", "调用太频繁,请稍后再试")

    def _check_system(self, params: dict[str, str]) -> None:
        cfg = self.config
        app_key = params.get("app_key", "")
        if app_key != cfg.wdt_app_key:
            raise WdtError("29", "Invalid app Key", "isv.appkey-not-exists", f"app_key[{app_key}]不存在")
        target = params.get("target_app_key", "")
        if target != cfg.wdt_target_app_key:
            raise WdtError("29", "Invalid app Key", "isv.target-appkey-invalid", f"target_app_key[{target}]无效")
        method = params.get("method", "")
        if not method:
            raise WdtError("21", "Missing method")
        if method != METHOD:
            raise WdtError("22", "Invalid method", "isv.method-not-exists", f"方法[{method}]不存在")
        self._check_timestamp(params.get("timestamp", ""))
        for name, expected in (("format", "json"), ("v", "2.0"), ("sign_method", "md5")):
            if not params.get(name):
                raise _missing(name)
            if params[name] != expected:
                raise _invalid(name, f"[{params[name]}] 应为 {expected}")
        if params.get("sign", "") != top_md5_sign(params, cfg.wdt_app_secret):
            raise WdtError("25", "Invalid signature", "isv.invalid-signature", "签名无效")
        sid = params.get("sid", "")
        if not sid:
            raise _missing("sid")
        if sid != cfg.wdt_sid:
            raise _invalid("sid", f"[{sid}] 卖家账号不存在")

    def _check_timestamp(self, text: str) -> None:
        try:
            sent = parse_wire_time("timestamp", text)
        except WdtError:
            raise WdtError("31", "Invalid timestamp", "isv.invalid-timestamp", f"timestamp[{text}]格式错误") from None
        if abs((now_beijing() - sent).total_seconds()) > self.config.timestamp_skew_s:
            raise WdtError("31", "Invalid timestamp", "isv.invalid-timestamp",
                           f"timestamp[{text}]与服务器时间相差超过{self.config.timestamp_skew_s}秒")

    def _page(self, query: Query) -> dict[str, Any]:
        with self._lock:
            if self._ordered is None:
                self._ordered = sorted(self._stockouts.values(), key=_order_key)
            found = [raw for modified, raw in self._ordered if query.matches(modified, raw)]
        first = query.page_no * query.page_size
        response: dict[str, Any] = {"flag": "success", "errorcode": 0, "message": ""}
        if query.page_no == 0 or self.config.wdt_total_count_every_page:
            response["total_count"] = str(len(found))
        response["stockout_list"] = found[first:first + query.page_size]
        return {"response": response}


def parse_query(params: dict[str, str], *, lookup_needs_window: bool = False) -> Query:
    """The business parameters, each refused with `40`/`41` naming it. `lookup_needs_window`: the
    edition that wants the times with a stockout_no too, refusing as the independent gateway does."""
    exact = tuple((field, params[name]) for name, field in _EXACT_FILTERS.items() if params.get(name))
    start = parse_wire_time("start_time", params["start_time"]) if params.get("start_time") else None
    end = parse_wire_time("end_time", params["end_time"]) if params.get("end_time") else None
    if params.get("stockout_no") and lookup_needs_window and (start is None or end is None):
        raise WdtError("11000000", "参数错误", "isv.invalid-parameter", "start_time和end_time不能为空")
    if not params.get("stockout_no"):  # looking up one order needs no window (in one edition's table)
        if start is None:
            raise _missing("start_time")
        if end is None:
            raise _missing("end_time")
    if start is not None and end is not None:
        if start > end:
            raise _invalid("start_time", "start_time不能晚于end_time")
        if end - start > MAX_SPAN:
            raise _invalid("end_time", "start_time与end_time间隔不能超过30天")
    return Query(
        start=start,
        end=end,
        page_no=_int_param(params, "page_no", 0, 0, None),
        page_size=_int_param(params, "page_size", 40, 1, 100),
        statuses=_statuses(params.get("status", "")),
        exact=exact,
    )


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    text = params.get(name, "")
    if text == "":
        return default
    if not text.isdigit():
        raise _invalid(name, f"[{text}] 不是整数")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise _invalid(name, f"[{text}] 超出范围 {low}–{high if high is not None else '∞'}")
    return value


def _statuses(text: str) -> frozenset[str]:
    if not text:
        return frozenset(FETCHED_STATUSES)
    if not _STATUS_RE.match(text):
        raise _invalid("status", f"[{text}] 应为状态值或以逗号分隔的状态值")
    return frozenset(text.split(","))


def _order_key(entry: tuple[datetime, dict[str, Any]]) -> tuple[datetime, int, str]:
    sid = entry[1]["stockout_id"]
    return entry[0], len(sid), sid  # numeric ids sort numerically


def _entry(raw: dict[str, Any]) -> tuple[datetime, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ValueError(f"a stockout must be an object, got {type(raw).__name__}")
    sid = raw.get("stockout_id")
    if not isinstance(sid, str):
        raise ValueError(f"a stockout needs a string stockout_id, got {sid!r}")
    if not sid.strip() and not raw.get("order_no"):
        raise ValueError("a stockout with an empty stockout_id (a broken record, as WDT could send) needs an order_no")
    raw = copy.deepcopy(raw)
    if not raw.get("modified"):
        raw["modified"] = format_wire(now_beijing())
    try:
        modified = parse_wire_time("modified", str(raw["modified"]))
    except WdtError as e:
        raise ValueError(f"stockout {sid}: {e.sub_message}") from None
    return modified, raw
