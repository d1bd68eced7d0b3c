"""`stockout-sync reconcile`: WDT, our done marks and BIP itself, compared for a range of WDT
modification times.

WDT is read page by page exactly as the producer reads it (same slices, same filters, same re-read
on a transient error); each page's stockouts are looked up in Redis (one MGET) and in BIP (one list
call by `defines!define1` IN the page's ids), so memory holds the mismatches, not the range.

How "changed in WDT after it was synced" is known without storing anything more per stockout: BIP's
list gives each record's `pubts` (the time BIP last wrote it); a WDT `modified` later than the
newest `pubts` of the stockout's records is an edit BIP never saw. A stockout that BIP holds but
that no longer passes the mapping's filters (cancelled, say) is reported the same way.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from producer.poll import read_slice, slices_for
from shared.deadletters import DeadLetterStore
from shared.retry import call_with_retries, in_process_policy
from shared.state import parse_done, stockout_key
from shared.timeutil import format_wire, parse_wire

if TYPE_CHECKING:
    from shared.mapping import Mapping
    from shared.runtime import Runtime

State = Literal["done", "queued", "dead_letter", "unseen"]
BIP_ATTEMPTS = 4
DEFINE1 = "defines!define1"


class Missing(BaseModel):
    """Eligible in WDT, no record in BIP; `state` is what this service thinks of it."""

    stockout_id: str
    order_no: str = ""
    modified: str = ""
    state: State
    bip_id: str = ""  # from the done mark: the record BIP once answered with


class BipRow(BaseModel):
    id: str
    code: str = ""
    pubts: str = ""


class Duplicated(BaseModel):
    stockout_id: str
    order_no: str = ""
    records: list[BipRow]


class Changed(BaseModel):
    stockout_id: str
    order_no: str = ""
    modified: str
    bip_written: str = ""
    bip_ids: list[str]
    why: str


class Report(BaseModel):
    since: str
    until: str
    pages: int = 0
    fetched: int = 0
    eligible: int = 0
    in_bip: int = 0
    unmarked: int = 0  # in BIP without a done mark here: harmless (the next delivery replays), counted
    missing: list[Missing] = Field(default_factory=list)
    duplicated: list[Duplicated] = Field(default_factory=list)
    changed: list[Changed] = Field(default_factory=list)
    requeued: list[str] = Field(default_factory=list)
    duration_s: float = 0.0

    @property
    def mismatches(self) -> int:
        return len(self.missing) + len(self.duplicated) + len(self.changed)


class Reconcile:
    def __init__(self, rt: Runtime, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rt = rt
        self.sleep = sleep
        self._seen: set[str] = set()
        self._raw_missing: dict[str, dict] = {}  # kept for --requeue-missing
        self._dead: set[str] = set()

    def run(
        self,
        since: datetime,
        until: datetime,
        *,
        on_page: Callable[[Report], None] | None = None,
        on_slice: Callable[[datetime], None] | None = None,
    ) -> Report:

        started = time.monotonic()
        report = Report(since=format_wire(since), until=format_wire(until))
        self._dead = set(DeadLetterStore(self.rt.redis, self.rt.settings.redis_prefix).ids())
        mapping = self.rt.mapping

        def page(stockouts: list[dict]) -> None:
            self._compare(stockouts, mapping, report)
            report.pages += 1
            if on_page:
                on_page(report)

        for s, e in slices_for(since, until, self.rt.settings.slice_days):
            read_slice(self.rt.wdt, s, e, on_page=page, settings=self.rt.settings, sleep=self.sleep, mapping=mapping)
            if on_slice:
                on_slice(e)
        report.duration_s = round(time.monotonic() - started, 3)
        return report

    def _compare(self, stockouts: list[dict], mapping: Mapping, report: Report) -> None:
        # A slice re-read after an error, and the one-second seams between slices, repeat records.
        fresh = []
        for raw in stockouts:
            sid = stockout_key(raw)
            if sid not in self._seen:
                self._seen.add(sid)
                fresh.append((sid, raw))
        report.fetched += len(fresh)
        in_bip = self._bip_rows([sid for sid, raw in fresh if not sid.startswith("noid-")])
        eligible: list[tuple[str, dict, str]] = []
        filtered: list[tuple[str, dict, str]] = []
        for sid, raw in fresh:
            ok, why = mapping.passes_filters(raw)
            (eligible if ok else filtered).append((sid, raw, why))
        states = self.rt.store.states([sid for sid, _, _ in eligible])
        report.eligible += len(eligible)

        for sid, raw, _ in eligible:
            rows, order_no, modified = in_bip.get(sid, []), _text(raw, "order_no"), _text(raw, "modified")
            state = states.get(sid)
            done = parse_done(state)
            if not rows:
                kind: State = (
                    "dead_letter" if sid in self._dead else "done" if done else "queued" if state else "unseen"
                )
                report.missing.append(Missing(stockout_id=sid, order_no=order_no, modified=modified, state=kind,
                                              bip_id=done.bip_id if done else ""))
                self._raw_missing[sid] = raw
                continue
            report.in_bip += 1
            if done is None:
                report.unmarked += 1
            if len(rows) > 1:
                report.duplicated.append(Duplicated(stockout_id=sid, order_no=order_no, records=rows))
            written = max((r.pubts for r in rows), default="")
            if _later(modified, written):
                report.changed.append(
                    Changed(
                        stockout_id=sid,
                        order_no=order_no,
                        modified=modified,
                        bip_written=written,
                        bip_ids=[r.id for r in rows],
                        why="modified in WDT after BIP's record was written",
                    )
                )
        for sid, raw, why in filtered:
            rows = in_bip.get(sid, [])
            if rows:
                report.changed.append(Changed(
                    stockout_id=sid, order_no=_text(raw, "order_no"), modified=_text(raw, "modified"),
                    bip_written=max(r.pubts for r in rows), bip_ids=[r.id for r in rows],
                    why=f"in BIP but no longer passes the mapping's filters ({why})",
                ))

    def _bip_rows(self, ids: list[str]) -> dict[str, list[BipRow]]:
        if not ids:
            return {}
        wanted = set(ids)
        found: dict[str, list[BipRow]] = {}
        rows = self._with_retries(lambda: list(self.rt.bip.find([{"field": DEFINE1, "op": "in", "value1": ids}])))
        for row in rows:
            sid = _define1(row)
            if sid in wanted:  # a gateway that matches loosely must not pair a record with the wrong stockout
                found.setdefault(sid, []).append(
                    BipRow(id=_text(row, "id"), code=_text(row, "code"), pubts=_text(row, "pubts"))
                )
        return found

    def _with_retries(self, call: Callable[[], Any]) -> Any:
        return call_with_retries(call, in_process_policy(self.rt.settings, BIP_ATTEMPTS), what="BIP lookup",
                                 sleep=self.sleep)

    def requeue_missing(self, report: Report, publish: Callable[[dict, str], Any]) -> list[str]:
        """Publish every missing stockout again, except dead letters (`dlq requeue` owns those).

        A done mark is cleared first, or the worker would skip the stockout as saved. A queued one
        is published again too: its message may be lost, and a second message is harmless (the
        worker de-duplicates)."""
        store = self.rt.store
        sent = []
        for missing in report.missing:
            if missing.state == "dead_letter":
                continue
            if missing.state == "done":
                store.forget(missing.stockout_id)
            publish(self._raw_missing[missing.stockout_id], missing.stockout_id)
            sent.append(missing.stockout_id)
        store.mark_queued(sent)
        report.requeued = sent
        return sent


def _text(obj: dict, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    return "" if value is None else str(value)


def _define1(row: dict) -> str:
    value = row.get(DEFINE1)
    if value in (None, "") and isinstance(row.get("defines"), dict):
        value = row["defines"].get("define1")
    return "" if value is None else str(value)


def _later(modified: str, written: str) -> bool:
    try:  # BIP may add milliseconds to pubts
        m, w = parse_wire(modified[:19]), parse_wire(written[:19])
    except ValueError:
        return False
    return m is not None and w is not None and m > w
