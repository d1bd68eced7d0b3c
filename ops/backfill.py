"""Starting a backfill job with the guard rails every way of starting one shares (`stockout-sync
backfill` and the console's Backfill page): a date alone as the end is that whole day, an end after
now is cut at now, a range over BACKFILL_MAX_DAYS is asked for, and whether a live beat walks it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from ops.render import seconds
from producer.backfill.jobs import Job, JobStore, bounded, too_long
from shared.core.timeutil import now_beijing, parse_given
from shared.observe.snapshot import Snapshot
from shared.redis.stats import saved as saved_count
from shared.runtime import Runtime
from shared.wdt.paging import ONE_SECOND

DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BackfillRefused(ValueError):
    """A range no job should be recorded for; the message names the values."""


@dataclass(frozen=True)
class BackfillRange:
    start: datetime
    end: datetime
    cut: str  # the warning when the end was cut at now ("" if it was not)
    too_long: bool  # over BACKFILL_MAX_DAYS: asked for before it is recorded

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400


def plan(since: str, until: str, *, max_days: float, now: datetime | None = None,
         names: tuple[str, str] = ("--since", "--until")) -> BackfillRange:
    """The range an operator asked for, as a job will walk it; ValueError (BackfillRefused) saying why not."""
    start, end = parse_given(since, names[0]), parse_given(until, names[1])
    if DATE_ONLY.match(until.strip()):
        end += timedelta(days=1) - ONE_SECOND  # the whole day, as an operator means it
    if end <= start:
        raise BackfillRefused(f"{names[1]} {until!r} must be after {names[0]} {since!r}")
    try:
        end, cut = bounded(start, end, now or now_beijing())
    except ValueError as err:
        raise BackfillRefused(str(err)) from err
    return BackfillRange(start, end, cut, too_long(start, end, max_days))


def start_backfill(rt: Runtime, planned: BackfillRange) -> Job:
    s = rt.settings
    return JobStore(rt.redis, s.redis_prefix).create(
        planned.start, planned.end, slice_s=int(s.slice_days * 86400), synced=saved_count(rt.redis, s.redis_prefix))


def beat_walks(rt: Runtime) -> tuple[bool, str]:
    """Whether a live beat walks a job now (a poll within two intervals), and that in words."""
    snap = Snapshot.read(rt.redis, rt.settings.redis_prefix)  # the judgement `status` makes of the heartbeat
    age, alive = snap.beat_age_s, snap.beat_alive(rt.settings.poll_interval_s)
    last = "never here" if age is None else f"{seconds(age)} ago"
    return alive, ("the producer (beat) walks it now" if alive else
                   f"no live beat (its last poll: {last}): the job waits until `stockout-sync beat` runs")
