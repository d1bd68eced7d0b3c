"""Is this stockout's record in BIP? A verified answer — found (ours), held by a foreign record, or
absent — or `Unproven`. Nothing BIP's list says counts until it is checked (docs/apis.md [I]); a
found row counts as ours only when its detail carries our define1 and, if it shows one, our key."""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from shared.bip.models import DEFINE1, define1_of
from shared.core.errors import APIConnectionError, InvalidRequestError, Kind, StockoutSyncError


class Reads(Protocol):
    """What a look-up needs of BIP: BipClient's two reads (named here, not imported: the client calls
    the look-up before each save whose key BIP may have forgotten)."""

    def detail(self, record_id: str) -> dict[str, Any] | None: ...

    def list_page(self, page_index: int, page_size: int, **query: Any) -> tuple[list[dict[str, Any]], int | None]: ...


PAGE = 100
MAX_UNLABELLED = 5  # list rows without define1 checked one by one by detail; more and the list is no help


class Unproven(APIConnectionError):
    """BIP could not say either way: the save waits (no attempt used) rather than go out blind."""


class ForeignRecordError(InvalidRequestError):
    """The document code is held by a record that is not this stockout's: saving would fail or clash."""


@dataclass(frozen=True)
class Found:
    id: str
    code: str


@dataclass(frozen=True)
class Foreign:
    id: str
    code: str
    define1: str
    key: str = ""

    def error(self, stockout_id: str) -> ForeignRecordError:
        return ForeignRecordError(
            f"code {self.code} already belongs to BIP record {self.id} (defines!define1="
            f"{self.define1 or '(empty)'}{f', resubmitCheckKey {self.key}' if self.key else ''}), which is not "
            f"stockout {stockout_id}'s: not saved, so nothing is booked twice or against the wrong record",
            api="bip",
        )


def is_ours(record: dict[str, Any], stockout_id: str, keys: Collection[str]) -> bool:
    """A record is this stockout's when it carries its define1 and, where BIP shows the record's
    resubmitCheckKey, one of our keys (two accounts with the same ids share define1, never a key)."""
    if define1_of(record) != stockout_id:
        return False
    key = record.get("resubmitCheckKey")
    return not key or str(key) in keys


def _text(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    return "" if value is None else str(value)


def prove(bip: Reads, stockout_id: str, code: str | None, keys: Collection[str]) -> Found | Foreign | None:
    """Our record (Found), the record holding our code (Foreign), or None: proven absent.

    By define1 (the list filtered on it, each row checked by its detail), and when the record is
    sent with a code, by that code too. Absent needs a list that proved it honours the filter (no
    row of another stockout) or a verified code look-up; otherwise `Unproven`. Rate limits and
    configuration errors are raised as they are (the caller waits or pauses)."""
    try:
        by_define1 = _by_define1(bip, stockout_id, keys)
        if isinstance(by_define1, Found):
            return by_define1
        coded = by_code(bip, stockout_id, code, keys) if code else "unasked"
    except StockoutSyncError as err:
        if isinstance(err, Unproven) or err.kind in (Kind.RATE_LIMITED, Kind.CONFIG, Kind.TOKEN_EXPIRED):
            raise
        raise Unproven(f"BIP's look-up of stockout {stockout_id} failed: {err.message}", api="bip") from None
    if isinstance(coded, (Found, Foreign)):
        return coded
    if by_define1 == "absent" or coded == "absent":
        return None
    why = by_define1 if coded == "unasked" else f"{by_define1}; {coded}"
    raise Unproven(f"BIP could not prove stockout {stockout_id} absent: {why}", api="bip")


def _by_define1(bip: Reads, sid: str, keys: Collection[str]) -> Found | str:
    rows, _ = bip.list_page(1, PAGE, simpleVOs=[{"field": DEFINE1, "op": "eq", "value1": sid}])
    labelled = [r for r in rows if define1_of(r)]
    if any(define1_of(r) != sid for r in labelled):
        return f"BIP's list ignored the {DEFINE1} filter"
    unlabelled = [r for r in rows if not define1_of(r)]
    if len(unlabelled) > MAX_UNLABELLED:
        return f"BIP's list rows carry no {DEFINE1}"
    mine_by_define1 = 0
    for row in rows:
        detail = bip.detail(_text(row, "id")) if _text(row, "id") else None
        if detail is None:
            continue
        if define1_of(detail) == sid:
            mine_by_define1 += 1
            if is_ours(detail, sid, keys):
                return Found(_text(detail, "id") or _text(row, "id"), _text(detail, "code") or _text(row, "code"))
    if unlabelled and not mine_by_define1 and len(rows) == len(unlabelled):
        return f"BIP's list rows carry no {DEFINE1} and none of them is this stockout's"
    return "absent"


def by_code(bip: Reads, sid: str, code: str, keys: Collection[str]) -> Found | Foreign | str:
    rows, _ = bip.list_page(1, PAGE, code=code)
    # a list may match a code loosely (SO-1 finds SO-10); one that shows codes not even holding ours ignored it
    if any(code not in _text(r, "code") for r in rows):
        return "BIP's list ignored the code filter"
    for row in (r for r in rows if _text(r, "code") == code):
        detail = bip.detail(_text(row, "id")) if _text(row, "id") else None
        if detail is None:
            continue
        if is_ours(detail, sid, keys):
            return Found(_text(detail, "id"), _text(detail, "code") or code)
        return Foreign(_text(detail, "id"), code, define1_of(detail), _text(detail, "resubmitCheckKey"))
    return "absent"
