"""Backfill jobs as Redis records: the range, the slice cursor, the counts and the state of each.

A job is one hash, `Keys.backfill_job`: field `job` is the producer's JSON (cursor and counts
committed together after each slice), field `cancel` is written by `backfill cancel` only, so the CLI
never overwrites what the producer writes. `Keys.backfill_jobs` indexes the ids by creation time.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any, Literal

import redis

from producer.counts import PageCounts
from shared.core.timeutil import format_wire, now_beijing, parse_wire
from shared.redis.keys import Keys
from shared.wdt.paging import ONE_SECOND

State = Literal["running", "done", "cancelled", "failed"]


class Job(PageCounts):
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
    error: str = ""
    synced_at_start: int = 0  # the synced counter when the job was created: the drain rate's base
    created_epoch: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state != "running"

    def next_start(self) -> datetime:
        cursor = parse_wire(self.cursor) if self.cursor else None
        return cursor + ONE_SECOND if cursor is not None else parse_time(self.since)

    def progress(self) -> float:
        """Share of the range committed, 0…1."""
        since, until = parse_time(self.since), parse_time(self.until)
        if self.state == "done":
            return 1.0
        if not self.cursor:
            return 0.0
        total = (until - since).total_seconds() or 1.0
        return max(0.0, min(1.0, (parse_time(self.cursor) - since).total_seconds() / total))


def parse_time(text: str) -> datetime:
    parsed = parse_wire(text)
    if parsed is None:
        raise ValueError(f"not a time: {text!r}")
    return parsed


class JobStore:
    """`Keys.backfill_jobs` (sorted set of ids by creation) and `Keys.backfill_job` (hash: `job` =
    the producer's JSON, `cancel` = set by `backfill cancel`)."""

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.r, self.p = r, prefix
        self.k = Keys(prefix)
        self.index = self.k.backfill_jobs

    def key(self, job_id: str) -> str:
        return self.k.backfill_job(job_id)

    def create(self, since: datetime, until: datetime, *, slice_s: int, synced: int) -> Job:
        if until <= since:
            raise ValueError(f"--until {format_wire(until)} must be after --since {format_wire(since)}")
        now = now_beijing()
        job = Job(
            id=uuid.uuid4().hex[:8],
            since=format_wire(since),
            until=format_wire(until),
            created_at=format_wire(now),
            updated_at=format_wire(now),
            slice_s=max(1, slice_s),
            synced_at_start=synced,
            created_epoch=time.time(),
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


def bounded(since: datetime, until: datetime, now: datetime) -> tuple[datetime, str]:
    """The end a job may have: WDT has nothing modified after now (later stockouts are the live
    poll's), so a range ending in the future is cut at now, with the warning to say so ("" if not)."""
    now = now.replace(microsecond=0)
    if until <= now:
        return until, ""
    if since >= now:
        raise ValueError(f"--since {format_wire(since)} is in the future (now {format_wire(now)})")
    return now, f"--until {format_wire(until)} is in the future: the job ends at now, {format_wire(now)}"


def too_long(since: datetime, until: datetime, max_days: float) -> bool:
    """Longer than BACKFILL_MAX_DAYS: likely a typo (a year off), so the CLI asks before recording it."""
    return (until - since).total_seconds() > max_days * 86400


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


def job_dict(job: Job, **extra: Any) -> dict[str, Any]:
    return {**job.model_dump(), "progress": round(job.progress(), 4), **extra}


def job_json(job: Job, **extra: Any) -> str:
    return json.dumps(job_dict(job, **extra), ensure_ascii=False)
