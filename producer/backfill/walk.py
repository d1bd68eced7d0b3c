"""Walking backfill jobs: a slice at a time, round robin, only while the backlog leaves room, in a
task of its own with its own lock (`backfill_once`), so the live poll never waits for a backfill read.

A producer that dies mid-slice leaves the job's cursor at its last committed slice, and the next one
re-reads that slice, publishing nothing the queued/done marks already cover. Messages go to the
backfill queue, which the workers read only when the live one is empty.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from pydantic import BaseModel

from producer.backfill.jobs import Job, JobStore, parse_time
from producer.counts import PageCounts
from producer.poll import PollSummary, Publish, publish_page, read_slice
from producer.window import slices_for
from shared.core import metrics
from shared.core.errors import StockoutSyncError
from shared.core.metrics import BACKFILL_JOBS, BACKLOG
from shared.core.timeutil import format_wire
from shared.queue.depth import backlog
from shared.redis import breaker
from shared.redis.keys import Keys

if TYPE_CHECKING:
    from shared.mapping.model import Mapping
    from shared.runtime import Runtime
    from shared.wdt.paging import WdtPage

log = logging.getLogger("stockout_sync.producer")
PAUSING_SCOPES = ("wdt", "state")  # breaker scopes that hold the backfill task


class Gate:
    """Backpressure with hysteresis: room while the backlog is under the high-water mark; once it
    reached it, none until the backlog drained below the low-water mark."""

    def __init__(self, r: redis.Redis, prefix: str, high: int, low: int) -> None:
        self.r, self.p, self.high, self.low = r, prefix, high, low
        self.key = Keys(prefix).backfill_paused

    def room(self) -> int:
        waiting = backlog(self.r, self.p)
        BACKLOG.set(waiting)
        paused = self.r.exists(self.key)
        if paused and waiting >= self.low:
            return 0
        if paused:
            self.r.delete(self.key)
        room = self.high - waiting
        if room <= 0:
            self.r.set(self.key, "1")
            return 0
        return room


Reader = Callable[[datetime, datetime, int], "SliceRead | None"]


class SliceRead(PageCounts):
    """What reading one slice added (None from the reader: the slice holds more than the budget)."""

    total: int = 0


def advance(
    store: JobStore,
    gate: Gate,
    read: Reader,
    *,
    deadline: float,
    keepalive: Callable[[], None],
    min_budget: int,
    max_budget: int,
    max_span_s: int,
    sleep: Callable[[float], Any] = time.sleep,
) -> int:
    """Walk the running jobs a slice at a time, round robin, until `deadline` (monotonic) or none is
    left; waits (calling `keepalive`) while the gate has no room. Returns the slices committed."""
    committed = 0
    while time.monotonic() < deadline:
        jobs = store.active()
        BACKFILL_JOBS.set(len(jobs))
        if not jobs:
            break
        for job in jobs:
            keepalive()
            if store.cancelled(job.id):
                continue
            room = gate.room()
            while room < min_budget and time.monotonic() < deadline:
                sleep(0.25)  # waiting for the workers to drain it; our place is the job's cursor
                keepalive()
                room = gate.room()
            if room < min_budget or time.monotonic() >= deadline:
                return committed
            done = _one_slice(store, job, read, min(room, max_budget), max_span_s)
            if done is None:
                return committed  # WDT failing: no use trying the other jobs in this poll
            committed += done
    return committed


def _one_slice(store: JobStore, job: Job, read: Reader, budget: int, max_span_s: int) -> bool | None:
    """Read and commit the job's next slice: True when committed, False when not (cut shorter, done,
    cancelled), None when reading it failed."""
    start, until = job.next_start(), parse_time(job.until)
    if start > until:
        job.state = "done"
        store.save(job)
        return False
    span = timedelta(seconds=max(1, min(job.slice_s, max_span_s)))
    end = slices_for(start, until, span)[0][1]
    try:
        got = read(start, end, budget)
    except StockoutSyncError as err:
        # The slice failed after its page retries: the cursor stays, the next poll tries again.
        log.warning(
            "backfill %s: slice %s → %s failed (%s); will try again",
            job.id, format_wire(start), format_wire(end), type(err).__name__,
        )
        return None
    if got is None:  # more stockouts than the budget: a shorter slice
        job.slice_s = max(1, int(span.total_seconds()) // 4 if span.total_seconds() > 4 else 1)
        store.save(job)
        return False
    if store.cancelled(job.id):
        return False  # cancelled while it read: the slice is not committed, the job stops
    job.cursor = format_wire(end)
    job.slices += 1
    job.add(got)
    if got.total * 4 < budget:  # room to spare: a longer slice next time
        job.slice_s = min(max_span_s, int(span.total_seconds()) * 2)
    if end >= until:
        job.state = "done"
    store.save(job)
    log.info(
        "backfill %s: slice %s → %s committed (%d published, %d already done, %d already queued)",
        job.id,
        format_wire(start),
        format_wire(end),
        got.published,
        got.already_done,
        got.already_queued,
        extra={"stage": "backfill"},
    )
    return True


class BackfillRun(BaseModel):
    """What one run of the backfill task did (Flower shows it as the task's result)."""

    slices: int = 0  # slices committed
    skipped: str = ""
    duration_s: float = 0.0


def backfill_once(rt: Runtime, publish: Publish, *, budget_s: float) -> BackfillRun:
    """The backfill jobs for at most `budget_s` (the slice being read when it runs out is finished), one
    run at a time under the backfill lock (Keys.backfill_lock), not the poll's: a live poll runs beside it."""
    settings, store = rt.settings, rt.store
    started = time.monotonic()
    run = BackfillRun()
    # WDT's configuration failing, or our state lost (scope `state`): the live poll probes and decides
    paused = breaker.opened(rt.redis, settings.redis_prefix, PAUSING_SCOPES)
    if paused:
        run.skipped = f"paused: {paused[0].api} (circuit breaker), the live poll probes it"
        return run
    token = uuid.uuid4().hex
    if not store.acquire_poll_lock(token, settings.poll_lock_ttl_s, task="backfill"):
        run.skipped = "another backfill run is going"
        return run

    def keepalive() -> None:
        if not store.renew_poll_lock(token, settings.poll_lock_ttl_s, task="backfill"):
            raise RuntimeError("the backfill lock expired while paging; stopping so two runs never overlap")

    try:
        with metrics.wdt_purpose("backfill"):
            run.slices = run_backfills(rt, publish, mapping=rt.mapping, keepalive=keepalive,
                                       deadline=time.monotonic() + budget_s)
    finally:
        store.release_poll_lock(token, task="backfill")
        run.duration_s = round(time.monotonic() - started, 3)
    if run.slices:
        log.info("backfill run: %d slices in %.1f s", run.slices, run.duration_s, extra={"stage": "backfill"})
    return run


def run_backfills(
    rt: Runtime, publish: Publish, *, mapping: Mapping, keepalive: Callable[[], None], deadline: float,
) -> int:
    """Advance the backfill jobs until `deadline`, each slice sized to the room the backlog leaves."""
    settings = rt.settings
    jobs = JobStore(rt.redis, settings.redis_prefix)
    gate = Gate(rt.redis, settings.redis_prefix, settings.high_water, settings.low_water)
    page_size = settings.wdt_page_size

    def read(start: datetime, end: datetime, budget: int) -> SliceRead | None:
        got = PollSummary()
        first = True

        def on_page(page: WdtPage) -> bool:
            nonlocal first
            # A slice that holds more than the room left is cut shorter before anything is published.
            if first and page.total_count is not None and page.total_count > budget and end > start:
                return False
            first = False
            publish_page(page.stockouts, store=rt.store, mapping=mapping, publish=publish, summary=got)
            got.pages += 1
            keepalive()
            return True

        pages, total = read_slice(rt.wdt, start, end, on_page=on_page, settings=settings, keepalive=keepalive,
                                  mapping=mapping)
        if first and pages and total > budget and end > start:
            return None
        return SliceRead(pages=pages, total=total, **got.model_dump(
            include={"fetched", "published", "already_done", "already_queued", "filtered_out"}))

    return advance(jobs, gate, read, deadline=deadline, keepalive=keepalive, min_budget=page_size,
                   max_budget=max(page_size, settings.high_water - settings.low_water),
                   max_span_s=int(settings.slice_days * 86400))
