"""Pydantic errors in words, one way everywhere: where (a mapping key, a stockout field, an
environment variable), what is wrong, and the value given — unless the message already quotes it
or the value is a secret. The mapping file, the transform and the settings all speak through it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def message_of(err: Mapping[str, Any]) -> str:
    """pydantic's message without its "Value error, " prefix, starting lower-case to follow a colon."""
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if message[:2].isupper():  # a variable's name (ALERT_WECOM_URL …) keeps its spelling
        return message
    return message[:1].lower() + message[1:]


def describe(err: Mapping[str, Any], where: str, shown: str | None) -> str:
    """`where: message, got <shown>`; `shown` is the value as the caller's reader writes it, None to hide it."""
    message = message_of(err)
    if shown is None or "got" in message:
        return f"{where}: {message}"
    return f"{where}: {message}, got {shown}"
