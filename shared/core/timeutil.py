"""Beijing time on the wire, whatever the host's time zone (invariant 5)."""
from __future__ import annotations

import re
from datetime import date, datetime
from zoneinfo import ZoneInfo

BEIJING = ZoneInfo("Asia/Shanghai")
WIRE_FORMAT = "%Y-%m-%d %H:%M:%S"
ZERO_DATETIME = "0000-00-00 00:00:00"
_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\Z", re.ASCII)


def now_beijing() -> datetime:
    return datetime.now(BEIJING)


def to_beijing(value: datetime) -> datetime:
    """Aware datetime in Beijing time; a naive one is taken to be Beijing time already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=BEIJING)
    return value.astimezone(BEIJING)


def format_wire(value: datetime) -> str:
    return to_beijing(value).strftime(WIRE_FORMAT)


def parse_wire(text: str) -> datetime | None:
    """`yyyy-MM-dd HH:mm:ss` Beijing time; WDT's zero date and empty strings mean "no value"."""
    text = (text or "").strip()
    if not text or text.startswith("0000-00-00"):
        return None
    if len(text) == 10:
        text += " 00:00:00"
    if _CANONICAL.match(text):
        # A stockout carries a dozen of these; strptime is ~20x slower than reading the digits.
        return datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                        int(text[17:19]), tzinfo=BEIJING)
    return datetime.strptime(text, WIRE_FORMAT).replace(tzinfo=BEIJING)


def parse_given(value: str, name: str) -> datetime:
    """A time an operator gave (`name`: the option or field), or ValueError saying what is expected."""
    try:
        parsed = parse_wire(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValueError(f"{name}={value!r}: expected 'yyyy-MM-dd' or 'yyyy-MM-dd HH:mm:ss' (Beijing time)")
    return parsed


def beijing_date(value: datetime) -> date:
    return to_beijing(value).date()
