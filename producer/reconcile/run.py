"""Reconcile: WDT, our done marks and BIP compared over a range of WDT modification times, where
nothing BIP says counts until it is verified. Below ops on purpose: the CLI (ops/cli/reconcile.py)
and beat's daily run (producer/tasks.py) run the same code. What each check means, and why a
check is declared "unverifiable" rather than guessed: docs/operating.md.
"""
from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, computed_field

from producer.poll import read_slice
from producer.reconcile.reports import push_report
from producer.window import slices_for
from shared.bip import lookup
from shared.bip.idempotency import our_keys
from shared.bip.models import DEFINE1, define1_of
from shared.bip.paging import BipListPaginator, ListPaginationError
from shared.core import metrics
from shared.core.errors import RateLimitError, StockoutSyncError
from shared.core.retry import call_with_retries, in_process_policy
from shared.core.timeutil import format_wire, now_beijing, parse_wire
from shared.deadletters.store import DeadLetterStore
from shared.mapping.model import MEMO_FIELDS
from shared.redis import epoch
from shared.redis.state import Done, mark_generation, parse_done, queued_mark, stockout_key
from shared.wdt.paging import WdtPage

if TYPE_CHECKING:
    from shared.mapping.model import Mapping
    from shared.runtime import Runtime

log = logging.getLogger("stockout_sync.reconcile")

State = Literal["done", "queued", "dead_letter", "unseen"]
CheckState = Literal["verified", "unverifiable"]
LIST_ATTEMPTS = 4
LIST_PAGE_SIZE = 100
PROBE_ATTEMPTS = 2  # a detail call that fails twice is "unknown": the next reconcile asks again
RATE_LIMIT_ATTEMPTS = 4
EXIT_CLEAN, EXIT_MISMATCH, EXIT_UNVERIFIED = 0, 1, 3
STORED_ROWS = 500  # per list in a stored daily report: 30 of them live in Redis


class Missing(BaseModel):
    """Eligible in WDT and proven absent from BIP; `state` is what this service thinks of it."""

    stockout_id: str
    order_no: str = ""
    modified: str = ""
    state: State
    bip_id: str = ""  # from the done mark: the record BIP once answered with
    generation: int = 0  # the resubmitCheckKey generation of the mark (worker.transform.resubmit_key)
    proof: str  # how absence was proven: BIP's detail said 1002, or a verified list / code look-up


class Unknown(BaseModel):
    """A stockout whose presence in BIP could not be proven either way: listed, never requeued."""

    stockout_id: str
    order_no: str = ""
    modified: str = ""
    state: State
    bip_id: str = ""
    reason: str  # short, for grouping: detail_failed, over_budget, unlooked_up, list_disagrees, …
    why: str


class BipRow(BaseModel):
    id: str
    code: str = ""
    pubts: str = ""
    fields: dict[str, str] = Field(default_factory=dict, exclude=True)  # the mapping's [fields] the row carries


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


class Check(BaseModel):
    state: CheckState
    why: str = ""


class Checks(BaseModel):
    missing: Check = Field(default_factory=lambda: Check(state="verified"))
    duplicates: Check = Field(default_factory=lambda: Check(state="verified"))
    changed: Check = Field(default_factory=lambda: Check(state="verified"))

    def unverifiable(self) -> list[str]:
        return [name for name, check in self if check.state == "unverifiable"]


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
    unknown: list[Unknown] = Field(default_factory=list)
    checks: Checks = Field(default_factory=Checks)
    bip_calls: dict[str, int] = Field(default_factory=lambda: {"list": 0, "detail": 0, "code": 0})
    requeued: list[str] = Field(default_factory=list)
    requeue_skipped: dict[str, str] = Field(default_factory=dict)  # stockout_id → why it was not sent
    duration_s: float = 0.0
    finished_at: str = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mismatches(self) -> int:
        """Verified mismatches only: an unknown stockout is not one (it makes the exit code 3)."""
        return len(self.missing) + len(self.duplicated) + len(self.changed)

    @property
    def exit_code(self) -> int:
        """0 all verified and clean, 1 a verified mismatch, 3 something could not be verified."""
        if self.mismatches:
            return EXIT_MISMATCH
        return EXIT_UNVERIFIED if self.checks.unverifiable() else EXIT_CLEAN


@dataclass
class _Item:
    """One stockout of the range while it waits for its proof."""

    sid: str
    order_no: str
    modified: str
    state: State
    mark: str | None
    done: Done | None
    eligible: bool
    filter_why: str
    raw: dict | None  # kept only when the run may requeue
    fields: dict[str, str] | None = None  # the [fields] the mapping gives the stockout now


@dataclass
class _Probe:
    item: _Item
    kind: Literal["detail", "code"]
    list_said_absent: bool = False


class Reconcile:
    """One run. `max_calls` caps the per-stockout BIP calls (detail and code look-ups; the list is
    one call per WDT page); with `sample` the ones checked are a random choice across the range."""

    def __init__(self, rt: Runtime, *, sleep: Callable[[float], None] = time.sleep, max_calls: int | None = None,
                 sample: bool = False, keep_raw: bool = False, rng: random.Random | None = None,
                 on_present: Callable[[str, BipRow], None] | None = None) -> None:
        self.rt = rt
        self.on_present = on_present  # told of each stockout proven in BIP, with its (first) record: recover
        self.sleep = sleep
        self.max_calls = max_calls
        self.sample = sample
        self.keep_raw = keep_raw
        self.rng = rng or random.Random()
        self._seen: set[str] = set()
        self._dead: set[str] = set()
        self._raw: dict[str, dict] = {}
        self._probes: list[_Probe] = []
        self._list_why = ""  # set once BIP's list proved untrustworthy: it is not asked again
        self._code_why = ""
        self._dup_unchecked = 0  # eligible stockouts in BIP whose records did not come from a verified list
        self._unwritten = 0  # present, but BIP gave no pubts to compare with
        self._unknown_filtered = 0  # filtered out in WDT, marked done here, presence in BIP unknown
        self._proofs: Counter[str] = Counter()
        found = epoch.read(rt.redis, rt.settings.redis_prefix)
        self._legacy_keys = bool(found and found.verify_before)  # keys of an older version may be ours too

    # -- the run ----------------------------------------------------------------------------------

    def run(
        self,
        since: datetime,
        until: datetime,
        *,
        on_page: Callable[[Report], None] | None = None,
        on_slice: Callable[[datetime], None] | None = None,
        on_probe: Callable[[int, int], None] | None = None,
    ) -> Report:
        started = time.monotonic()
        report = Report(since=format_wire(since), until=format_wire(until))
        self._dead = set(DeadLetterStore(self.rt.redis, self.rt.settings.redis_prefix).ids())
        mapping = self.rt.mapping

        def page(got: WdtPage) -> None:
            self._compare(got.stockouts, mapping, report)
            report.pages += 1
            if on_page:
                on_page(report)

        with metrics.wdt_purpose("reconcile"):
            for s, e in slices_for(since, until, timedelta(days=self.rt.settings.slice_days)):
                read_slice(self.rt.wdt, s, e, on_page=page, settings=self.rt.settings, sleep=self.sleep,
                           mapping=mapping)
                if on_slice:
                    on_slice(e)
            self._run_probes(report, on_probe)
        self._judge(report)
        report.duration_s = round(time.monotonic() - started, 3)
        report.finished_at = format_wire(now_beijing())
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
        ids = [sid for sid, _ in fresh if not sid.startswith("noid-")]
        states = self.rt.store.states(ids)
        listed = self._list_rows(ids, report)
        for sid, raw in fresh:
            ok, why = mapping.passes_filters(raw)
            state = states.get(sid)
            done = parse_done(state)
            kind: State = "dead_letter" if sid in self._dead else "done" if done else "queued" if state else "unseen"
            item = _Item(sid, _text(raw, "order_no"), _text(raw, "modified"), kind, state, done, ok, why,
                         raw if self.keep_raw else None, _fields_now(raw, mapping))
            report.eligible += ok
            if sid.startswith("noid-"):  # no stockout_id, so no record of ours can carry it
                if ok:
                    self._absent(item, report, "it has no stockout_id, so no record was ever saved for it")
                continue
            rows = listed.get(sid) if listed is not None else None
            if rows:
                self._present(item, rows, report, from_list=True)
            elif done is not None:
                # our mark names the record: only BIP's answer for that id proves it gone
                self._probes.append(_Probe(item, "detail", list_said_absent=listed is not None))
            elif listed is not None:
                if ok:
                    self._absent(item, report, "not in BIP's list (filter verified), never marked saved here")
            elif ok:
                if mapping.document.send_code and item.order_no:
                    self._probes.append(_Probe(item, "code"))
                else:
                    self._unknown(item, report, "unlooked_up", f"no done mark to look up by id, and {self._list_why}")
            # a filtered stockout we never marked was never sent by us: nothing of ours can be in BIP

    # -- BIP's list, verified ---------------------------------------------------------------------

    def _list_rows(self, ids: list[str], report: Report) -> dict[str, list[BipRow]] | None:
        """Each id's records per BIP's list, or None once the list cannot be trusted.

        Trusted only when every row carries `defines!define1` with one of the ids asked for: a list
        that ignored the filter, or rows cut down to a few fields, cannot tell a missing record from
        one it did not show."""
        if self._list_why:
            return None
        if not ids:
            return {}
        wanted = set(ids)
        found: dict[str, list[BipRow]] = {}
        query = [{"field": DEFINE1, "op": "in", "value1": ids}]
        pages = BipListPaginator(LIST_PAGE_SIZE)
        while not pages.finished:
            try:
                rows, total = self._with_retries(partial(self.rt.bip.list_page, pages.next_page, LIST_PAGE_SIZE,
                                                         simpleVOs=query), report)
            except StockoutSyncError as err:
                return self._distrusted(f"BIP's list failed ({err.message})")
            for row in rows:
                sid = define1_of(row)
                if not sid:
                    return self._distrusted(f"BIP's list rows carry no {DEFINE1} (record {_text(row, 'id')} came "
                                          f"with {', '.join(sorted(row))} only)")
                if sid not in wanted:
                    return self._distrusted(f"BIP's list ignored the {DEFINE1} filter (it returned record "
                                          f"{_text(row, 'id')} of stockout {sid}, which was not asked for)")
            try:
                pages.advance(rows, total)
            except ListPaginationError as err:
                return self._distrusted(f"BIP's list does not add up ({err.message})")
            for row in rows:
                found.setdefault(define1_of(row), []).append(
                    BipRow(id=_text(row, "id"), code=_text(row, "code"), pubts=_text(row, "pubts"),
                           fields=_fields_of(row, self.rt.mapping)))
        return found

    def _distrusted(self, why: str) -> dict[str, list[BipRow]] | None:
        self._distrust(why)
        return None

    def _distrust(self, why: str) -> None:
        if not self._list_why:
            log.warning("reconcile: %s; it is not used any more in this run", why)
            self._list_why = why

    # -- proofs by id -----------------------------------------------------------------------------

    def _run_probes(self, report: Report, on_probe: Callable[[int, int], None] | None) -> None:
        probes = self._probes
        self._probes = []
        budget = self.max_calls
        if budget is not None and self.sample and budget < len(probes):
            chosen = set(self.rng.sample(range(len(probes)), budget))
            probes = [p for i, p in enumerate(probes) if i in chosen] + [
                p for i, p in enumerate(probes) if i not in chosen]
        total = len(probes)
        used = 0
        for n, probe in enumerate(probes, start=1):
            if _spent(budget, used):
                how = "not in the random sample" if self.sample else "not checked"
                self._unknown(probe.item, report, "over_budget", f"{how}: the --max-calls budget of {budget} was spent")
            elif probe.kind == "detail":
                used += self._probe_detail(probe, report, budget, used)
            else:
                used += self._probe_code(probe, report, budget, used)
            if on_probe:
                on_probe(n, total)

    def _ask(self, call: Callable[[], Any], report: Report, kind: str, budget: int | None,
             used: int) -> tuple[Any, int]:
        """One look-up, patient with rate limits, one more try on a transient failure; every try is
        a call spent from the budget. Returns (the answer or the last error, calls used)."""
        calls, failures, limited = 0, 0, 0
        while True:
            calls += 1
            report.bip_calls[kind] += 1
            try:
                return call(), calls
            except RateLimitError as err:
                limited += 1
                if limited >= RATE_LIMIT_ATTEMPTS or _spent(budget, used + calls):
                    return err, calls
                self.sleep(min(60.0, err.retry_after or 1.0))
            except StockoutSyncError as err:
                failures += 1
                if not err.should_retry or failures >= PROBE_ATTEMPTS or _spent(budget, used + calls):
                    return err, calls
                self.sleep(1.0)

    def _probe_detail(self, probe: _Probe, report: Report, budget: int | None, used: int) -> int:
        item = probe.item
        assert item.done is not None
        bip_id = item.done.bip_id
        if not bip_id:  # an old replay whose id was never learnt: nothing to ask for
            self._unknown(item, report, "no_id", "its done mark holds no BIP id to look up")
            return 0
        answer, calls = self._ask(lambda: self.rt.bip.detail(bip_id), report, "detail", budget, used)
        if isinstance(answer, StockoutSyncError):
            self._unknown(item, report, "detail_failed", f"BIP's detail for record {bip_id} failed: {answer.message}")
        elif answer is None:
            if item.eligible:
                self._absent(item, report, f"BIP's detail answered 1002 (not found) for record {bip_id}")
        else:
            other_id, other_sid = _text(answer, "id"), define1_of(answer)
            if (other_id and other_id != bip_id) or (other_sid and other_sid != item.sid):
                self._unknown(item, report, "detail_disagrees",
                              f"BIP's detail for record {bip_id} answered record {other_id or '?'} "
                              f"of stockout {other_sid or '?'}")
                return calls
            if probe.list_said_absent:
                self._distrust(f"BIP's list left out record {bip_id} of stockout {item.sid}, which its detail shows")
            row = BipRow(id=bip_id, code=_text(answer, "code") or item.done.bip_code, pubts=_text(answer, "pubts"))
            self._present(item, [row], report, from_list=False)
        return calls

    def _probe_code(self, probe: _Probe, report: Report, budget: int | None, used: int) -> int:
        """By the document code, each row checked by its detail: a record holding our code counts as
        present only when it is this stockout's (define1, and our key where BIP shows one)."""
        item = probe.item
        unlooked = "no done mark to look up by id; {}; {}"
        if self._code_why:
            self._unknown(item, report, "unlooked_up", unlooked.format(self._list_why, self._code_why))
            return 0
        keys = our_keys(item.sid, self.rt.settings.key_account, generations=mark_generation(item.mark),
                        legacy=self._legacy_keys)
        answer, calls = self._ask(lambda: lookup.by_code(self.rt.bip, item.sid, item.order_no, keys),
                                  report, "code", budget, used)
        if isinstance(answer, StockoutSyncError):
            self._unknown(item, report, "code_failed",
                          f"BIP's look-up by code {item.order_no} failed: {answer.message}")
        elif isinstance(answer, lookup.Found):
            self._present(item, [BipRow(id=answer.id, code=answer.code)], report, from_list=False)
        elif isinstance(answer, lookup.Foreign):
            self._absent(item, report, f"code {item.order_no} is held by BIP record {answer.id} of "
                         f"{answer.define1 or 'no stockout'} (a foreign record), and no record of this stockout's "
                         "can hold it too")
        elif answer == "absent":
            self._absent(item, report, f"no record with code {item.order_no} in BIP (code look-up verified), "
                         "never marked saved here")
        else:
            self._code_why = "BIP's list ignores the code filter too"
            self._unknown(item, report, "unlooked_up", unlooked.format(self._list_why, self._code_why))
        return calls

    # -- outcomes ---------------------------------------------------------------------------------

    def _present(self, item: _Item, rows: list[BipRow], report: Report, *, from_list: bool) -> None:
        if self.on_present is not None and rows:
            self.on_present(item.sid, rows[0])
        written = max((r.pubts for r in rows), default="")
        if not item.eligible:
            report.changed.append(Changed(
                stockout_id=item.sid, order_no=item.order_no, modified=item.modified, bip_written=written,
                bip_ids=[r.id for r in rows],
                why=f"in BIP but no longer passes the mapping's filters ({item.filter_why})",
            ))
            return
        report.in_bip += 1
        self._proofs["list" if from_list else "id"] += 1
        if item.done is None:
            report.unmarked += 1
        if not from_list:
            self._dup_unchecked += 1
        elif len(rows) > 1:
            report.duplicated.append(Duplicated(stockout_id=item.sid, order_no=item.order_no, records=rows))
        if not written:
            self._unwritten += 1
        elif _later(item.modified, written):
            report.changed.append(Changed(stockout_id=item.sid, order_no=item.order_no, modified=item.modified,
                                          bip_written=written, bip_ids=[r.id for r in rows],
                                          why="modified in WDT after BIP's record was written"))
            return
        differ = _fields_differ(item.fields or {}, rows)
        if differ:
            report.changed.append(Changed(stockout_id=item.sid, order_no=item.order_no, modified=item.modified,
                                          bip_written=written, bip_ids=[r.id for r in rows],
                                          why=f"the tenant's [fields] differ from the mapping's values now: {differ}"))

    def _absent(self, item: _Item, report: Report, proof: str) -> None:
        self._proofs["absent"] += 1
        report.missing.append(Missing(
            stockout_id=item.sid, order_no=item.order_no, modified=item.modified, state=item.state,
            bip_id=item.done.bip_id if item.done else "", generation=mark_generation(item.mark), proof=proof,
        ))
        if item.raw is not None:
            self._raw[item.sid] = item.raw

    def _unknown(self, item: _Item, report: Report, reason: str, why: str) -> None:
        if not item.eligible:
            self._unknown_filtered += 1
            return
        report.unknown.append(Unknown(stockout_id=item.sid, order_no=item.order_no, modified=item.modified,
                                      state=item.state, bip_id=item.done.bip_id if item.done else "",
                                      reason=reason, why=why))

    def _judge(self, report: Report) -> None:
        """What was and was not checked, in words."""
        checks = report.checks
        unknown_filtered = self._unknown_filtered
        if report.unknown:
            groups = Counter(u.reason for u in report.unknown)
            examples = {u.reason: u.why for u in reversed(report.unknown)}
            said = "; ".join(f"{n} × {examples[reason]}" for reason, n in groups.most_common())
            checks.missing = Check(state="unverifiable", why=f"{len(report.unknown)} of {report.eligible} stockouts "
                                   f"could not be proven present or absent: {said}")
        else:
            p = self._proofs
            checks.missing = Check(state="verified", why=f"{report.eligible} stockouts: {p['list']} found by the "
                                   f"verified list, {p['id']} by id, {p['absent']} proven absent")
        unchecked = self._dup_unchecked + len(report.unknown)
        if unchecked:
            cause = self._list_why or "some stockouts were looked up by id only"
            checks.duplicates = Check(state="unverifiable", why=f"{cause}; {unchecked} of {report.eligible} "
                                      "stockouts not checked for a second record (a record entered by hand has its "
                                      "own id and code)")
        else:
            checks.duplicates = Check(state="verified", why="every stockout's records came from a verified list")
        gaps = []
        if report.unknown or unknown_filtered:
            gaps.append(f"{len(report.unknown) + unknown_filtered} stockouts of unknown presence")
        if self._unwritten:
            gaps.append(f"{self._unwritten} records without BIP's write time (pubts)")
        if gaps:
            checks.changed = Check(state="unverifiable", why="not compared: " + ", ".join(gaps))
        else:
            checks.changed = Check(state="verified", why="every record in BIP compared with WDT's modified time")

    # -- acting on proven absence -----------------------------------------------------------------

    def requeue_missing(self, report: Report, publish: Callable[..., Any]) -> list[str]:
        """Publish again what is proven missing, except dead letters (`dlq requeue` owns those).

        A record proven deleted in BIP (its done mark's id answered 1002) is sent with the next key
        generation: BIP remembers the old resubmitCheckKey and would only replay the deleted
        record. Its done mark becomes `q|<generation>` first, only if it is still the mark this run
        read, so the worker does not skip it and a stranded requeue still knows its generation.
        Unknown stockouts are never sent."""
        store = self.rt.store
        sent: list[str] = []
        for m in report.missing:
            if m.state == "dead_letter":
                report.requeue_skipped[m.stockout_id] = "a dead letter: `stockout-sync dlq requeue` sends it"
                continue
            raw = self._raw.get(m.stockout_id)
            if raw is None:
                report.requeue_skipped[m.stockout_id] = "its stockout was not kept (run with keep_raw)"
                continue
            if m.state == "done":
                generation = m.generation + 1
                before = store.states([m.stockout_id]).get(m.stockout_id)
                done = parse_done(before)
                reopened = done is not None and done.bip_id == m.bip_id and store.swap_mark(
                    m.stockout_id, before or "", queued_mark(generation))
                if not reopened:
                    report.requeue_skipped[m.stockout_id] = "its done mark changed since it was checked"
                    continue
                try:
                    publish(raw, m.stockout_id, generation=generation)
                except BaseException:
                    store.swap_mark(m.stockout_id, queued_mark(generation), before or "")
                    raise
            else:
                publish(raw, m.stockout_id, generation=m.generation)
                store.mark_queued([m.stockout_id])
            sent.append(m.stockout_id)
        report.requeued = sent
        return sent

    # -- plumbing ---------------------------------------------------------------------------------

    def _with_retries(self, call: Callable[[], Any], report: Report) -> Any:
        def count() -> None:
            report.bip_calls["list"] += 1

        return call_with_retries(call, in_process_policy(self.rt.settings, LIST_ATTEMPTS), what="BIP lookup",
                                 sleep=self.sleep, before=count)


def _spent(budget: int | None, used: int) -> bool:
    return budget is not None and used >= budget


def previous_beijing_day(now: datetime | None = None) -> tuple[datetime, datetime]:
    """[yesterday 00:00:00, yesterday 23:59:59] in Beijing time (WDT's windows are closed intervals)."""
    today = (now or now_beijing()).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1), today - timedelta(seconds=1)


def run_daily(rt: Runtime, *, now: datetime | None = None) -> Report:
    """Beat's daily reconcile of the previous Beijing day, stored for `status` and the alerts."""
    since, until = previous_beijing_day(now)
    budget = rt.settings.reconcile_daily_max_calls or None
    report = Reconcile(rt, max_calls=budget, sample=True).run(since, until)
    push_report(rt.redis, rt.settings.redis_prefix, stored_form(report))
    log.info("daily reconcile %s → %s: %d mismatches, unverifiable: %s", report.since, report.until,
             report.mismatches, ", ".join(report.checks.unverifiable()) or "none")
    return report


def stored_form(report: Report) -> dict[str, Any]:
    """The report as Redis keeps it: whole, except that each list holds at most STORED_ROWS rows
    (`<list>_total` then says how many there were; `mismatches` always counts them all)."""
    data = report.model_dump(mode="json")
    for name in ("missing", "duplicated", "changed", "unknown"):
        rows = data[name]
        data[f"{name}_total"] = len(rows)
        data[name] = rows[:STORED_ROWS]
    return data


def _text(obj: Any, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    return "" if value is None else str(value)


def _fields_now(raw: Any, mapping: Mapping) -> dict[str, str]:
    if not mapping.fields or not isinstance(raw, dict):
        return {}
    return mapping.header_fields({name: _text(raw, name).strip() for name in MEMO_FIELDS})


def _fields_of(row: dict, mapping: Mapping) -> dict[str, str]:
    """The mapping's [fields] a list row carries (a tenant's list may show none of them: then none are compared)."""
    return {name: _text(row, name) for name in mapping.fields if name in row}


def _fields_differ(now: dict[str, str], rows: list[BipRow]) -> str:
    """Where a record's [fields] differ from the mapping's values now (a changed template, or a WDT
    edit the pubts comparison missed); only fields the row carries are compared."""
    out = []
    for row in rows:
        for name, value in row.fields.items():
            if value != now.get(name, ""):
                out.append(f"{name} (BIP {value[:40]!r}, now {now.get(name, '')[:40]!r})")
    return "; ".join(sorted(set(out))[:5])


def _later(modified: str, written: str) -> bool:
    try:  # BIP may add milliseconds to pubts
        m, w = parse_wire(modified[:19]), parse_wire(written[:19])
    except ValueError:
        return False
    return m is not None and w is not None and m > w
