"""The receiver's personal data in a WDT stockout: every `receiver_*` field (field table in docs/seed; WDT
marks most of them deprecated, but a tenant may still fill them). No mapping reads them (MEMO_FIELDS has
none), so a stockout without them becomes the same BIP record (docs/design.md, "Data minimisation and
secret files")."""
from __future__ import annotations

from typing import Any

PERSONAL_PREFIX = "receiver_"
PERSONAL_FIELDS = ("receiver_name", "receiver_mobile", "receiver_telno", "receiver_address", "receiver_zip")


def is_personal(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PERSONAL_PREFIX)


def redact(raw: Any) -> Any:
    """The stockout without the receiver's personal data (a copy; anything not a dict as it is)."""
    if not isinstance(raw, dict) or not any(is_personal(k) for k in raw):
        return raw
    return {k: v for k, v in raw.items() if not is_personal(k)}
