"""用友BIP: data-centre discovery, the self-built-app token, and the other outbound record
(save / list / detail) behind the gateway's `access_token` check.

Strict on purpose: a token signature encoded twice is refused, a Bearer header is not a token,
every reference field must name known master data, and `resubmitCheckKey` behaves as the gateway's
idempotency store does (same answer for an hour, "duplicate submission" after).
"""
from __future__ import annotations

import base64
import copy
import hmac
import itertools
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from shared.bip.sign import self_app_signature
from shared.core.timeutil import format_wire, now_beijing

from .config import SandboxConfig
from .data import MASTER, MATERIALS
from .faults import Counters, Faults, RateLimit, Reply, Request, html_reply, json_reply

DISCOVERY_PATH = "/open-auth/dataCenter/getGatewayAddress"
TOKEN_PATHS = ("/open-auth/selfAppAuth/base/v1/getAccessToken", "/open-auth/selfAppAuth/getAccessToken")
SAVE_PATH = "/yonbip/scm/othoutrecord/single/save"
LIST_PATH = "/yonbip/scm/othoutrecord/list"
DETAIL_PATH = "/yonbip/scm/othoutrecord/detail"

MAX_KEY_LENGTH = 32
MAX_PAGE_SIZE = 500
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FIRST_RECORD_ID = 2_000_000_000_000_000_001  # 19 digits, above every master-data id

# header reference fields: (field, master-data kind, how the error names it)
_HEADER_REFS = (("org", "org", "库存组织"), ("accountOrg", "org", "会计主体"),
                ("bustype", "bustype", "交易类型"), ("warehouse", "warehouse", "仓库"))
_LIST_FIELDS = ("id", "code", "vouchdate", "org", "accountOrg", "warehouse", "bustype", "defines!define1",
                "memo", "srcBillType", "status", "pubts")
# what a tenant's list may be cut down to (docs/apis.md: "rows may carry only a few fields")
_FEW_FIELDS = ("id", "code", "vouchdate", "warehouse", "status")


def bip_reply(code: str, message: str, data: Any = None) -> Reply:
    payload: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        payload["data"] = data
    return json_reply(payload)


def ok(data: Any) -> Reply:
    return bip_reply("200", "操作成功", data)


class Invalid(Exception):
    """A refused request; `code` is BIP's (999 business, 310008 parameter)."""

    def __init__(self, message: str, code: str = "999") -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Remembered:
    """A successful save as the gateway's idempotency store keeps it."""

    body: dict[str, Any]
    at: float


class BipApi:
    def __init__(self, config: SandboxConfig, counters: Counters, faults: Faults, limit: RateLimit,
                 base_url: Callable[[], str]) -> None:
        self.config = config
        self.counters = counters
        self.faults = faults
        self.limit = limit
        self._base_url = base_url
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token → monotonic expiry
        self.set_list_mode(config.bip_list_ignores_filters, config.bip_list_omits_fields)
        self.key_memory_s = config.bip_key_memory_s
        self.clear()

    def set_list_mode(self, ignore_filters: bool | None = None, omit_fields: bool | None = None) -> dict[str, bool]:
        """How `othoutrecord/list` behaves, as a real tenant's may (docs/apis.md, [I]):
        `ignore_filters` honours only pageIndex, pageSize and code (simpleVOs are dropped);
        `omit_fields` gives rows of id, code, vouchdate, warehouse and status only. None = unchanged."""
        with self._lock:
            if ignore_filters is not None:
                self.list_ignores_filters = bool(ignore_filters)
            if omit_fields is not None:
                self.list_omits_fields = bool(omit_fields)
            return {"ignore_filters": self.list_ignores_filters, "omit_fields": self.list_omits_fields}

    def clear(self) -> None:
        """Forget every record and resubmitCheckKey; issued tokens stay valid, as a client's
        cached token would across a reset of the tenant's data."""
        with self._lock:
            self._records: dict[str, dict[str, Any]] = {}  # id → record, in insertion order
            self._codes: set[str] = set()
            self._keys: dict[str, _Remembered] = {}
            self._ids = itertools.count(_FIRST_RECORD_ID)
            self._seq = itertools.count(1)

    def routes(self) -> dict[tuple[str, str], Callable[[Request], Reply]]:
        table: dict[tuple[str, str], Callable[[Request], Reply]] = {
            ("GET", DISCOVERY_PATH): self.discovery,
            ("POST", SAVE_PATH): self.save,
            ("POST", LIST_PATH): self.list_records,
            ("GET", DETAIL_PATH): self.detail,
        }
        table.update({("GET", path): self.token for path in TOKEN_PATHS})
        return table

    # ---- discovery and token (no faults: they are not business endpoints)

    def discovery(self, request: Request) -> Reply:
        tenant = request.query.get("tenantId", "")
        if not tenant:
            return bip_reply("310008", "参数错误: 缺少tenantId")
        if tenant != self.config.bip_tenant_id:
            return bip_reply("999", f"租户[{tenant}]不存在")
        url = self._base_url()
        return bip_reply("00000", "成功", {"gatewayUrl": url, "tokenUrl": url})

    def token(self, request: Request) -> Reply:
        try:
            self._check_token_request(request.query)
        except Invalid as e:
            self.counters.inc("bip_token_request_errors")
            return bip_reply(e.code, e.message)
        token = _new_token()
        with self._lock:
            self._tokens[token] = time.monotonic() + self.config.token_lifetime_s
        self.counters.inc("bip_tokens_issued")
        return bip_reply("00000", "成功", {"access_token": token, "expire": math.ceil(self.config.token_lifetime_s)})

    def _check_token_request(self, query: dict[str, str]) -> None:
        cfg = self.config
        for name in ("appKey", "timestamp", "signature"):
            if not query.get(name):
                raise Invalid(f"参数错误: 缺少{name}", "310008")
        if query["appKey"] != cfg.bip_app_key:
            raise Invalid(f"appKey[{query['appKey']}]不存在", "10018")
        stamp = query["timestamp"]
        if not stamp.isdigit() or abs(time.time() * 1000 - int(stamp)) > cfg.timestamp_skew_s * 1000:
            raise Invalid(f"timestamp[{stamp}]无效或已过期", "310008")
        # `query` went through exactly one URL-decoding: a signature encoded twice still shows %2B
        expected = self_app_signature(cfg.bip_app_key, stamp, cfg.bip_app_secret)
        if not hmac.compare_digest(query["signature"].encode(), expected.encode()):
            raise Invalid("签名验证失败", "310000")

    def revoke(self) -> None:
        with self._lock:
            self._tokens.clear()

    # ---- the business endpoints

    def _gate(self, request: Request, *, limited: bool) -> Reply | None:
        """What stands between a call and the business logic: latency, faults, token, limits."""
        self.faults.sleep(self.config.bip_latency_ms / 1000.0 + self.faults.latency_s("bip"))
        if self.faults.roll("bip", "http_502"):
            return html_reply(502, "Bad Gateway")
        refused = self._check_access_token(request.query.get("access_token", ""))
        if refused is not None:
            self.counters.inc("bip_token_rejections")
            return refused
        if self.faults.roll("bip", "rate_limit") or (limited and not self.limit.allow()):
            self.counters.inc("bip_rate_limited")
            return bip_reply("310046", "访问频率超限")
        if self.faults.roll("bip", "code_310504"):
            return bip_reply("310504", "网关超时")
        return None

    def _check_access_token(self, token: str) -> Reply | None:
        if not token:
            return bip_reply("310001", "缺少access_token参数")
        with self._lock:
            expiry = self._tokens.get(token)
        if expiry is None or expiry <= time.monotonic():
            return bip_reply("310036", "非法token或token已过期")
        return None

    def save(self, request: Request) -> Reply:
        self.counters.inc("bip_save_calls")
        refused = self._gate(request, limited=True)
        if refused is not None:
            return refused
        try:
            data = _save_data(request)
            reply = self._store(data)
        except Invalid as e:
            self.counters.inc("bip_validation_errors")
            return bip_reply(e.code, e.message)
        if self.faults.roll("bip", "slow_stored"):
            # stored already: a client that times out here must not save it a second time
            self.faults.sleep(self.faults.slow_s("bip"))
        return reply

    def _store(self, data: dict[str, Any]) -> Reply:
        key = data.get("resubmitCheckKey") or ""
        now = time.monotonic()
        with self._lock:  # one lock around check-and-store: two racing saves store one record
            seen = self._keys.get(key) if key else None
            if seen is not None and self.key_memory_s is not None and now - seen.at > self.key_memory_s:
                self.counters.inc("bip_keys_forgotten")
                seen = None  # forgotten: this save is stored again, as a gateway without memory would
            if seen is not None:
                return self._replay(seen, now)
            validate_record(data, self.config.numbering)
            code = (data.get("code") or "").strip() or self._next_code(data["vouchdate"])
            if code in self._codes:
                self.counters.inc("bip_duplicates_blocked")
                return bip_reply("999", f"单据编号[{code}]已存在")
            record = self._insert(data, code)
            body = {"code": "200", "message": "操作成功", "data": _echo(record)}
            if key:
                self._keys[key] = _Remembered(body, now)
        self.counters.inc("bip_saves")
        return json_reply(body)

    def _replay(self, seen: _Remembered, now: float) -> Reply:
        if now - seen.at <= self.config.replay_window_s:
            self.counters.inc("bip_replays")
            return json_reply(seen.body)
        self.counters.inc("bip_duplicates_blocked")
        return bip_reply("100004", "重复提交")

    def _next_code(self, vouchdate: str) -> str:
        while True:
            code = f"QTCK{vouchdate.replace('-', '')}{next(self._seq):06d}"
            if code not in self._codes:
                return code

    def _insert(self, data: dict[str, Any], code: str, key: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": str(next(self._ids)),
            "code": code,
            "resubmitCheckKey": data.get("resubmitCheckKey") if key is None else key,
            "data": copy.deepcopy(data),
            "created_at": format_wire(now_beijing()),
        }
        self._records[record["id"]] = record
        self._codes.add(code)
        return record

    def list_records(self, request: Request) -> Reply:
        self.counters.inc("bip_list_calls")
        refused = self._gate(request, limited=False)
        if refused is not None:
            return refused
        try:
            body = _json_object(request)
            page_index = _page_number(body, "pageIndex", 1, 1, None)
            page_size = _page_number(body, "pageSize", 10, 1, MAX_PAGE_SIZE)
            wanted = _filters(body, only_code=self.list_ignores_filters)
        except Invalid as e:
            return bip_reply(e.code, e.message)
        with self._lock:
            rows = [_list_row(r) for r in self._records.values()]
        rows = [row for row in rows if all(test(row) for test in wanted)]
        if self.list_omits_fields:
            rows = [{name: row[name] for name in _FEW_FIELDS} for row in rows]
        first = (page_index - 1) * page_size
        return ok({
            "pageIndex": page_index,
            "pageSize": page_size,
            "recordCount": len(rows),
            "pageCount": math.ceil(len(rows) / page_size),
            "recordList": rows[first:first + page_size],
        })

    def detail(self, request: Request) -> Reply:
        self.counters.inc("bip_detail_calls")
        if self.faults.roll("bip", "detail_http_502"):
            return html_reply(502, "Bad Gateway")
        refused = self._gate(request, limited=True)
        if refused is not None:
            return refused
        record_id = request.query.get("id", "")
        if not record_id:
            return bip_reply("310008", "参数错误: 缺少id")
        with self._lock:
            record = self._records.get(record_id)
            if record is None:
                return bip_reply("1002", f"单据[{record_id}]不存在")
            return ok({**copy.deepcopy(record["data"]), **_list_row(record)})

    # ---- test controls

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._records.values()))

    def restore(self, records: list[dict[str, Any]]) -> int:
        """Records as `records()` gave them (a saved sandbox's): stored again under their ids and codes."""
        with self._lock:
            for record in records:
                if not isinstance(record, dict) or not str(record.get("id", "")).isdigit() or "data" not in record:
                    raise ValueError(f"a record needs a numeric id and its data, got {str(record)[:80]}")
                self._records[str(record["id"])] = copy.deepcopy(record)
                self._codes.add(str(record.get("code", "")))
            top = max((int(i) for i in self._records), default=_FIRST_RECORD_ID - 1)
            self._ids = itertools.count(max(top + 1, _FIRST_RECORD_ID))
        return len(records)

    def delete_record(self, record_id: str, forget_key: bool = False) -> None:
        """Remove a record as if someone deleted it in BIP. Its code becomes free again; its
        resubmitCheckKey stays remembered unless `forget_key` (the gateway's store is separate)."""
        with self._lock:
            record = self._records.pop(record_id, None)
            if record is None:
                raise KeyError(f"no record {record_id}")
            self._codes.discard(record["code"])
            if forget_key and record["resubmitCheckKey"]:
                self._keys.pop(record["resubmitCheckKey"], None)

    def duplicate_record(self, record_id: str) -> dict[str, Any]:
        """Store a second copy under a new id and code: the duplicate a reconcile must find."""
        with self._lock:
            original = self._records.get(record_id)
            if original is None:
                raise KeyError(f"no record {record_id}")
            data = original["data"]
            copy_ = self._insert(data, self._next_code(data["vouchdate"]), key=original["resubmitCheckKey"])
            return copy.deepcopy(copy_)

    def set_key_memory(self, seconds: float | None) -> float | None:
        """Forget a resubmitCheckKey `seconds` after its save (None: remember it for good)."""
        if seconds is not None and seconds < 0:
            raise ValueError(f"seconds must be ≥ 0 or null, got {seconds!r}")
        with self._lock:
            self.key_memory_s = seconds
        return seconds

    def forget_keys(self) -> int:
        with self._lock:
            forgotten = len(self._keys)
            self._keys.clear()
        return forgotten  # bip_keys_forgotten counts saves that found their key expired, not these

    def add_record(self, code: str, define1: str | None = None, vouchdate: str | None = None) -> dict[str, Any]:
        """A record typed in BIP by hand (or by another system): its own code, no resubmitCheckKey,
        `define1` only if given."""
        if not isinstance(code, str) or not code.strip():
            raise ValueError(f"code must be a non-empty string, got {code!r}")
        data: dict[str, Any] = {"vouchdate": vouchdate or now_beijing().date().isoformat(),
                                "warehouse": "typed-by-hand", "memo": "typed in by hand"}
        if define1 is not None:
            data["defines!define1"] = define1
        with self._lock:
            if code in self._codes:
                raise ValueError(f"code {code!r} exists already")
            return copy.deepcopy(self._insert(data, code, key=""))

    def duplicate_stockouts(self) -> int:
        with self._lock:
            seen: dict[str, int] = {}
            for record in self._records.values():
                sid = record["data"].get("defines!define1")
                if sid:
                    seen[sid] = seen.get(sid, 0) + 1
        return sum(1 for n in seen.values() if n > 1)


# ---------------------------------------------------------------------------------------------
# helpers


def _new_token() -> str:
    # real tokens need URL encoding; make sure every one does, so a client that forgets fails
    while True:
        token = base64.b64encode(secrets.token_bytes(31)).decode("ascii")
        if "+" in token and "/" in token:
            return token


def _json_object(request: Request) -> dict[str, Any]:
    content_type = (request.headers.get("Content-Type") or "").lower()
    if "application/json" not in content_type:
        raise Invalid(f"参数错误: Content-Type[{content_type}]应为application/json", "310008")
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError):
        raise Invalid("参数错误: 请求体不是合法的JSON", "310008") from None
    if not isinstance(body, dict):
        raise Invalid("参数错误: 请求体应为JSON对象", "310008")
    return body


def _save_data(request: Request) -> dict[str, Any]:
    data = _json_object(request).get("data")
    if not isinstance(data, dict):
        raise Invalid("参数错误: 缺少data对象", "310008")
    key = data.get("resubmitCheckKey")
    if key is not None and (not isinstance(key, str) or len(key) > MAX_KEY_LENGTH):
        raise Invalid(f"参数错误: resubmitCheckKey[{key}]长度不能超过{MAX_KEY_LENGTH}", "310008")
    return data


def validate_record(data: dict[str, Any], numbering: str) -> None:
    """BIP's business checks on an other outbound record; the message names field and value."""
    _require(data, ("org", "accountOrg", "vouchdate", "bustype", "warehouse", "_status"), "")
    if data["_status"] != "Insert":
        raise Invalid(f"_status[{data['_status']}]无效,新增单据应为Insert")
    for name, kind, label in _HEADER_REFS:
        if MASTER.code_of(kind, data[name]) is None:
            raise Invalid(f"{label}[{data[name]}]不存在")
    _check_date("vouchdate", data["vouchdate"])
    code = data.get("code")
    if code is not None and not isinstance(code, str):
        raise Invalid(f"单据编号[{code}]应为字符串")
    if numbering == "manual" and not (code or "").strip():
        raise Invalid("单据编号不能为空(租户为手工编号)")
    define1 = data.get("defines!define1")
    if define1 is not None and not isinstance(define1, str):
        raise Invalid(f"defines!define1[{define1}]应为字符串")
    lines = data.get("othOutRecords")
    if not isinstance(lines, list) or not lines:
        raise Invalid("othOutRecords不能为空")
    for n, line in enumerate(lines, start=1):
        _check_line(n, line)


def _require(obj: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    for name in names:
        if obj.get(name) in (None, ""):
            raise Invalid(f"{where}{name}不能为空")


def _check_date(name: str, value: Any) -> None:
    text = value if isinstance(value, str) else repr(value)
    try:
        if not _DATE_RE.match(text):
            raise ValueError
        date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{name}[{text}]格式错误,应为yyyy-MM-dd") from None


def _check_line(n: int, line: Any) -> None:
    where = f"othOutRecords第{n}行"
    if not isinstance(line, dict):
        raise Invalid(f"{where}应为对象")
    _require(line, ("product", "qty", "unit", "_status"), f"{where}: ")
    if line["_status"] != "Insert":
        raise Invalid(f"{where}: _status[{line['_status']}]无效,新增应为Insert")
    product = MASTER.code_of("product", line["product"])
    if product is None:
        raise Invalid(f"物料[{line['product']}]不存在")
    if MASTER.code_of("unit", line["unit"]) is None:
        raise Invalid(f"计量单位[{line['unit']}]不存在")
    _check_positive(f"{where}: qty", line["qty"])
    for name in ("subQty", "invExchRate", "contactsQuantity", "contactsPieces"):
        if line.get(name) not in (None, ""):
            _check_positive(f"{where}: {name}", line[name])
    for name in ("invaliddate", "producedate"):
        if line.get(name) not in (None, ""):
            _check_date(f"{where}: {name}", line[name])
    if MATERIALS[product].batch_managed and not line.get("batchno"):
        raise Invalid(f"物料[{line['product']}]启用批次管理,{where}: batchno不能为空")
    if line.get("source") not in (None, "") and line.get("autoCalcCost") not in (True, False, "true", "false"):
        raise Invalid(f"{where}: 有来源单据时autoCalcCost必填(true/false),实际为[{line.get('autoCalcCost')}]")


def _check_positive(name: str, value: Any) -> None:
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InvalidOperation
        number = Decimal(str(value).strip())
        if not number.is_finite() or number <= 0:
            raise InvalidOperation
    except InvalidOperation:
        raise Invalid(f"{name}[{value}]应为正数") from None


def _echo(record: dict[str, Any]) -> dict[str, Any]:
    data = record["data"]
    echo = {"id": record["id"], "code": record["code"], "status": 0}
    for name in ("vouchdate", "org", "accountOrg", "warehouse", "bustype", "defines!define1", "resubmitCheckKey"):
        if data.get(name) is not None:
            echo[name] = data[name]
    return echo


def _list_row(record: dict[str, Any]) -> dict[str, Any]:
    data = record["data"]
    row = {name: data.get(name) for name in _LIST_FIELDS}
    # the tenant's own header fields (自定义项, "defines!defineN") are list columns too
    row.update({name: value for name, value in data.items() if "!" in name and isinstance(value, str)})
    row.update(id=record["id"], code=record["code"], status=0, pubts=record["created_at"])
    return row


def _page_number(body: dict[str, Any], name: str, default: int, low: int, high: int | None) -> int:
    value = body.get(name, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise Invalid(f"参数错误: {name}[{value}]无效", "310008")
    return value


_OPS: dict[str, Callable[[Any, Any, Any], bool]] = {
    "eq": lambda v, a, b: v == a,
    "neq": lambda v, a, b: v != a,
    "in": lambda v, a, b: v in (a if isinstance(a, list) else str(a).split(",")),
    "like": lambda v, a, b: v is not None and str(a) in str(v),
    "gt": lambda v, a, b: v is not None and v > a,
    "egt": lambda v, a, b: v is not None and v >= a,
    "lt": lambda v, a, b: v is not None and v < a,
    "elt": lambda v, a, b: v is not None and v <= a,
    "between": lambda v, a, b: v is not None and a <= v <= b,
}


def _filters(body: dict[str, Any], *, only_code: bool = False) -> list[Callable[[dict[str, Any]], bool]]:
    tests: list[Callable[[dict[str, Any]], bool]] = []
    if body.get("code"):
        code = str(body["code"])
        tests.append(lambda row: row["code"] == code)
    conditions = body.get("simpleVOs") or []
    if not isinstance(conditions, list):
        raise Invalid("参数错误: simpleVOs应为数组", "310008")
    if only_code:  # a tenant whose list drops what it cannot filter on, silently
        return tests
    for condition in conditions:
        tests.append(_condition(condition))
    return tests


def _condition(condition: Any) -> Callable[[dict[str, Any]], bool]:
    if not isinstance(condition, dict):
        raise Invalid("参数错误: simpleVOs的元素应为对象", "310008")
    name, op = condition.get("field"), condition.get("op")
    if name not in _LIST_FIELDS:
        raise Invalid(f"查询字段[{name}]不存在")
    if op not in _OPS:
        raise Invalid(f"查询条件[{op}]不支持")
    test = _OPS[op]
    low, high = _bound(name, condition.get("value1")), _bound(name, condition.get("value2"))
    if op == "between" and (low is None or high is None):
        raise Invalid(f"查询条件between需要value1和value2(字段{name})")
    return lambda row: test(row.get(name), low, high)


def _bound(name: str, value: Any) -> Any:
    # a date field compared with a date-time bound compares by the date
    if name == "vouchdate" and isinstance(value, str):
        return value[:10]
    return value
