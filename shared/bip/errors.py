"""用友BIP reply codes as data: code → kind, read by the client, the metrics and the logs alike.

Source: docs/apis.md (the gateway's published codes); a code not listed is refused content.
"""
from __future__ import annotations

from typing import Any

from shared.core.errors import Kind, StockoutSyncError, make_error

API = "bip"

CODES: dict[str, Kind] = {
    "200": Kind.SUCCESS,
    "00000": Kind.SUCCESS,
    "100004": Kind.DUPLICATE,  # resubmitCheckKey seen more than an hour ago: our earlier save
    "10004": Kind.DUPLICATE,
    "310001": Kind.TOKEN_EXPIRED,  # no token
    "310036": Kind.TOKEN_EXPIRED,  # invalid or expired token
    "310000": Kind.CONFIG,  # token request: signature check failed (BIP_APP_SECRET)
    "10015": Kind.CONFIG,  # token request refused (an empty or wrong secret)
    "10018": Kind.CONFIG,  # unknown appKey
    "310037": Kind.CONFIG,  # API not granted to the app
    "310032": Kind.RATE_LIMITED,
    "310039": Kind.RATE_LIMITED,
    "310042": Kind.RATE_LIMITED,
    "310046": Kind.RATE_LIMITED,
    "202": Kind.TRANSIENT,  # still processing: ask again with the same resubmitCheckKey
    "310504": Kind.TRANSIENT,  # gateway timeout
    "310043": Kind.TRANSIENT,  # the gateway's own circuit breaker is open
    "310008": Kind.INVALID_DATA,  # parameter errors
    "310015": Kind.INVALID_DATA,
    "310023": Kind.INVALID_DATA,
    "999": Kind.INVALID_DATA,  # business validation; BIP's words name the field and the value
    "1002": Kind.NOT_FOUND,
}

# What an operator should look at, by kind: appended to the error's message.
HINTS: dict[Kind, str] = {
    Kind.CONFIG: "BIP authentication or grant failed — configuration error: check BIP_APP_KEY / BIP_APP_SECRET "
                 "and the API grants of the app",
    Kind.TRANSIENT: "retry with the same resubmitCheckKey",
}
TOKEN_CODE_WORDS = ("timestamp",)  # a token request refused for its timestamp: our clock, not credentials


def code_of(body: Any) -> str:
    """The `code` of a BIP envelope ("" when there is none), as a string whatever JSON type it came as."""
    if isinstance(body, dict):
        value = body.get("code")
        return "" if value is None else str(value).strip()
    return ""


def failure_code(body: Any) -> str:
    """The code of a reply that is not a success ("" for one), for the calls' metric."""
    code = code_of(body)
    return "" if not code or kind_of(code) is Kind.SUCCESS else code


def message_of(body: Any) -> str:
    return str(body.get("message") or body.get("msg") or "") if isinstance(body, dict) else ""


def kind_of(code: str) -> Kind:
    return CODES.get(code, Kind.INVALID_DATA)


def token_kind(code: str, message: str) -> Kind:
    """A refused token request: the same table, except that what is not a wait or a hiccup is the
    credentials' fault (nothing in a token request comes from a stockout)."""
    kind = kind_of(code)
    if kind in (Kind.RATE_LIMITED, Kind.TRANSIENT):
        return kind
    if any(word in message.lower() for word in TOKEN_CODE_WORDS):
        return Kind.TRANSIENT
    if code == "00000":  # "success" without a token: the gateway's hiccup
        return Kind.TRANSIENT
    return Kind.CONFIG


def error(
    kind: Kind, said: str, *, code: str = "", api_message: str = "", http_status: int | None = None,
    retry_after: float | None = None,
) -> StockoutSyncError:
    """The one factory of BIP errors: the typed class for `kind`, worded with the hint for it."""
    hint = HINTS.get(kind)
    message = f"{said} — {hint}" if hint and kind is Kind.CONFIG else f"{said} ({hint})" if hint else said
    return make_error(kind, message, api=API, code=code, api_message=api_message, http_status=http_status,
                      retry_after=retry_after)
