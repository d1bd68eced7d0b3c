"""Backfill jobs: a past range recorded in Redis and walked by the producer slice by slice.

A job commits its cursor, counts and slice span in one write after a whole slice is published; a
producer that dies mid-slice leaves the cursor at the last committed slice, and the next one re-reads
that slice, publishing nothing the queued/done marks already cover. Cancelling is a separate field
(the CLI never overwrites what the producer writes). Messages go to the backfill queue, which the
workers read only when the live one is empty, and only while the backlog leaves room (backpressure).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

import redis
from pydantic import BaseModel

from producer.window import slices_for
from shared.backlog import backlog
from shared.metrics import BACKFILL_JOBS, BACKLOG
from shared.timeutil import format_wire, now_beijing, parse_wire
from shared.wdt.paging import ONE_SECOND

log = logging.getLogger("stockout_sync.producer")

State = Literal["running", "done", "cancelled", "failed"]


class Job(BaseModel):
    id: str
    since: str
    until: str
    cursor: str = ""  # end of the last committed slice; "" = none yet
    state: State = "running"
    created_at: str = ""
    updated_at: str = ""
    finished_at: str = ""
    slice_s: int = 86400  # span of the next slice: shrinks when a slice would overfill the backlog
    slices: int = 0
    pages: int = 0
    fetched: int = 0
    published: int = 0
    already_done: int = 0
    already_queued: int = 0
    filtered_out: int = 0
    error: str = ""
    synced_at_start: int = 0  # the synced counter when the job was created: the drain rate's base
    created_epoch: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state != "running"

    def next_start(self) -> datetime:
        cursor = parse_wire(self.cursor) if self.cursor else None
        return cursor + ONE_SECOND if cursor is not None else _parse(self.since)

    def progress(self) -> float:
        """Share of the range committed, 0…1."""
        since, until = _parse(self.since), _parse(self.until)
        if self.state == "done":
            return 1.0
        if not self.cursor:
            return 0.0
        total = (until - since).total_seconds() or 1.0
        return max(0.0, min(1.0, (_parse(self.cursor) - since).total_seconds() / total))


def _parse(text: str) -> datetime:
    parsed = parse_wire(text)
    if parsed is None:
        raise ValueError(f"not a time: {text!r}")
    return parsed


class JobStore:
    """`{p}:backfill:jobs` (sorted set of ids by creation) and `{p}:backfill:job:{id}` (hash: `job` =
    the producer's JSON, `cancel` = set by `backfill cancel`)."""

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.r, self.p = r, prefix
        self.index = f"{prefix}:backfill:jobs"

    def key(self, job_id: str) -> str:
        return f"{self.p}:backfill:job:{job_id}"

    def create(self, since: datetime, until: datetime, *, slice_s: int, synced: int) -> Job:
        if until <= since:
            raise ValueError(f"--until {format_wire(until)} must be after --since {format_wire(since)}")
        now = now_beijing()
        job = Job(
            id=uuid.uuid4().hex[:8], since=format_wire(since), until=format_wire(until), created_at=format_wire(now),
            updated_at=format_wire(now), slice_s=max(1, slice_s), synced_at_start=synced, created_epoch=time.time(),
        )
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key(job.id), "job", job.model_dump_json())
        pipe.zadd(self.index, {job.id: job.created_epoch})
        pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        raw = self.r.hmget(self.key(job_id), ["job", "cancel"])
        if raw[0] is None:
            return None
        job = Job.model_validate_json(raw[0])
        if raw[1] is not None and job.state == "running":
            job.state = "cancelled"
        return job

    def all(self) -> list[Job]:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in self.r.zrange(self.index, 0, -1)]
        jobs = [self.get(i) for i in ids]
        return [j for j in jobs if j is not None]

    def active(self) -> list[Job]:
        return [j for j in self.all() if not j.finished]

    def cancel(self, job_id: str) -> Job | None:
        if self.get(job_id) is None:
            return None
        self.r.hset(self.key(job_id), "cancel", format_wire(now_beijing()))
        return self.get(job_id)

    def cancelled(self, job_id: str) -> bool:
        return bool(self.r.hexists(self.key(job_id), "cancel"))

    def save(self, job: Job) -> None:
        """The producer's commit: one write of the whole job (cursor and counts together)."""
        job.updated_at = format_wire(now_beijing())
        if job.finished and not job.finished_at:
            job.finished_at = job.updated_at
        self.r.hset(self.key(job.id), "job", job.model_dump_json())


class Gate:
    """Backpressure with hysteresis: room while the backlog is under the high-water mark; once it
    reached it, none until the backlog drained below the low-water mark."""

    def __init__(self, r: redis.Redis, prefix: str, high: int, low: int) -> None:
        self.r, self.p, self.high, self.low = r, prefix, high, low
        self.key = f"{prefix}:backfill:paused"

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


class SliceRead(BaseModel):
    """What reading one slice added (None from the reader: the slice holds more than the budget)."""

    pages: int = 0
    fetched: int = 0
    published: int = 0
    already_done: int = 0
    already_queued: int = 0
    filtered_out: int = 0
    total: int = 0


def advance(
    store: JobStore, gate: Gate, read: Reader, *, deadline: float, keepalive: Callable[[], None],
    min_budget: int, max_budget: int, max_span_s: int, sleep: Callable[[float], Any] = time.sleep,
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
            if _one_slice(store, job, read, min(room, max_budget), max_span_s):
                committed += 1
    return committed


def _one_slice(store: JobStore, job: Job, read: Reader, budget: int, max_span_s: int) -> bool:
    start, until = job.next_start(), _parse(job.until)
    if start > until:
        job.state = "done"
        store.save(job)
        return False
    span = timedelta(seconds=max(1, min(job.slice_s, max_span_s)))
    end = slices_for(start, until, span)[0][1]
    try:
        got = read(start, end, budget)
    except Exception as err:
        # The slice failed after its page retries: the cursor stays, the next tick tries again.
        log.warning("backfill %s: slice %s → %s failed (%s); will try again", job.id, format_wire(start),
                    format_wire(end), type(err).__name__)
        return False
    if got is None:  # more stockouts than the budget: a shorter slice
        job.slice_s = max(1, int(span.total_seconds()) // 4 if span.total_seconds() > 4 else 1)
        store.save(job)
        return False
    if store.cancelled(job.id):
        return False  # cancelled while it read: the slice is not committed, the job stops
    job.cursor = format_wire(end)
    job.slices += 1
    for field in ("pages", "fetched", "published", "already_done", "already_queued", "filtered_out"):
        setattr(job, field, getattr(job, field) + getattr(got, field))
    if got.total * 4 < budget:  # room to spare: a longer slice next time
        job.slice_s = min(max_span_s, int(span.total_seconds()) * 2)
    if end >= until:
        job.state = "done"
    store.save(job)
    log.info("backfill %s: slice %s → %s committed (%d published, %d already done, %d already queued)", job.id,
             format_wire(start), format_wire(end), got.published, got.already_done, got.already_queued,
             extra={"stage": "backfill"})
    return True


def eta_s(job: Job, *, synced_now: int, waiting: int, now_epoch: float) -> float | None:
    """Seconds until the job's last stockout is saved, at the drain rate measured since it began:
    stockouts still to publish (estimated from the share of the range done) plus those waiting."""
    if job.finished:
        return 0.0
    elapsed = now_epoch - job.created_epoch
    drained = synced_now - job.synced_at_start
    progress = job.progress()
    if elapsed <= 0 or drained <= 0 or progress <= 0:
        return None
    rate = drained / elapsed
    estimated_total = job.published / progress
    return max(0.0, (estimated_total - job.published + waiting) / rate)


def job_json(job: Job, **extra: Any) -> str:
    return json.dumps({**job.model_dump(), "progress": round(job.progress(), 4), **extra}, ensure_ascii=False)
