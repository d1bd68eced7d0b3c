"""旺店通 / Qimen (Taobao TOP) reply codes as data: code and sub_code → kind and what to check.

Read by the client, the metrics and the logs alike. TOP codes: doc 101617; WDT's own: docs/apis.md.
"""
from __future__ import annotations

import re
from typing import Any

from shared.core.errors import Kind, StockoutSyncError, make_error

API = "wdt"

CODES: dict[str, Kind] = {
    "7": Kind.RATE_LIMITED,  # TOP: app call limited
    "1012": Kind.RATE_LIMITED,  # WDT: too frequent
    "10": Kind.TRANSIENT,  # service unavailable
    "15": Kind.TRANSIENT,  # remote service error
    "31": Kind.TRANSIENT,  # invalid timestamp: our clock or the gateway's, often passing
    "11": Kind.CONFIG,  # insufficient ISV permissions
    "12": Kind.CONFIG,  # insufficient user permissions
    "25": Kind.CONFIG,  # invalid signature
    "26": Kind.CONFIG,  # missing session
    "27": Kind.CONFIG,  # invalid session
    "28": Kind.CONFIG,  # missing app key
    "29": Kind.CONFIG,  # invalid app key
    "21": Kind.INVALID_DATA,  # missing method
    "22": Kind.INVALID_DATA,  # invalid method
    "40": Kind.INVALID_DATA,  # missing required arguments
    "41": Kind.INVALID_DATA,  # invalid arguments
}

# sub_codes, checked before the code: the most specific words win. (pattern, kind)
SUB_CODES: list[tuple[re.Pattern[str], Kind]] = [
    (re.compile(r"call-limited|accesscontrol\.limited|too-frequent|frequency", re.I), Kind.RATE_LIMITED),
    (re.compile(r"sign|signature|app-?key|appkey|permission|secret|isv\.invalid-app|:sid$|:app_key$|:target_app_key$",
                re.I), Kind.CONFIG),
    (re.compile(r"timestamp", re.I), Kind.TRANSIENT),
    (re.compile(r"^isp\.", re.I), Kind.TRANSIENT),
    (re.compile(r"^isv\.(missing|invalid)", re.I), Kind.INVALID_DATA),
]

# Which variable to check for a configuration error: by sub_code words first, then by code.
_CHECK_BY_WORDS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"target", re.I), "WDT_TARGET_APP_KEY"),
    (re.compile(r"sign|secret", re.I), "WDT_APP_SECRET"),
    (re.compile(r"app-?key|appkey|invalid-app", re.I), "WDT_APP_KEY"),
    (re.compile(r"sid", re.I), "WDT_SID"),
]
_CHECK_BY_CODE = {"25": "WDT_APP_SECRET", "28": "WDT_APP_KEY", "29": "WDT_APP_KEY"}
_ALL = "WDT_APP_KEY / WDT_APP_SECRET / WDT_SID / WDT_TARGET_APP_KEY"
_BAN_SECONDS = re.compile(r"(\d+)\s*(?:more\s+seconds|seconds?|秒)", re.I)


def failure_of(body: Any) -> dict[str, str] | None:
    """The failure fields of a reply body (the object inside `response`), or None for a success:
    no `flag == "failure"` and `code`/`errorcode` empty or 0."""
    if not isinstance(body, dict):
        return None

    def nonzero(value: Any) -> bool:
        return value not in (None, "", 0, "0")

    code = next((body[k] for k in ("code", "errorcode") if nonzero(body.get(k))), None)
    if code is None and str(body.get("flag", "")).lower() != "failure":
        return None
    return {
        "code": "" if code is None else str(code).strip(),
        "message": str(body.get("message") or body.get("msg") or ""),
        "sub_code": str(body.get("sub_code") or ""),
        "sub_message": str(body.get("sub_message") or body.get("sub_msg") or ""),
    }


def unwrap(data: Any) -> Any:
    if isinstance(data, dict):
        for key in ("response", "error_response"):
            if isinstance(data.get(key), dict):
                return data[key]
    return data


def code_of(data: Any) -> str:
    """The code a whole reply answered with ("" for a success), for metrics and logs."""
    failure = failure_of(unwrap(data))
    if failure is None:
        return ""
    return failure["code"] or failure["sub_code"] or "failure"


def kind_of(code: str, sub_code: str = "") -> Kind:
    for pattern, kind in SUB_CODES:
        if sub_code and pattern.search(sub_code):
            return kind
    return CODES.get(code, Kind.INVALID_DATA)


def check_what(code: str, sub_code: str) -> str:
    """The variable(s) a configuration error points at (e.g. isv.sign-check-failure → WDT_APP_SECRET)."""
    for pattern, name in _CHECK_BY_WORDS:
        if sub_code and pattern.search(sub_code):
            return name
    return _CHECK_BY_CODE.get(code, _ALL)


def retry_after_of(failure: dict[str, str]) -> float | None:
    """Seconds the gateway said to wait ("ban … 12 more seconds"), if it said."""
    match = _BAN_SECONDS.search(failure.get("message", "") + " " + failure.get("sub_message", ""))
    return float(match.group(1)) if match else None


def error(
    kind: Kind, said: str, *, code: str = "", sub_code: str = "", api_message: str = "", http_status: int | None = None,
    retry_after: float | None = None,
) -> StockoutSyncError:
    """The one factory of WDT errors: the typed class for `kind`, worded with what to check."""
    if kind is Kind.CONFIG:
        said = f"{said} — WDT authentication failed, configuration error: check {check_what(code, sub_code)}"
    elif kind is Kind.RATE_LIMITED:
        said = f"{said} (rate limited)"
    elif kind is Kind.TRANSIENT and ("timestamp" in sub_code.lower() or code == "31"):
        said = f"{said} (timestamp refused: check the host clock)"
    return make_error(kind, said, api=API, code=code or sub_code, api_message=api_message, http_status=http_status,
                      retry_after=retry_after)
