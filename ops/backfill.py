"""Starting a backfill job, with the guard rails every way of starting one shares (the CLI's
`backfill --since --until` and the console's Backfill page)."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from producer.jobs import Job, JobStore
from shared.stats import saved as saved_count
from shared.timeutil import format_wire

if TYPE_CHECKING:  # for the annotations only: the runtime loads shared.metrics, which must come after the exporter
    from shared.runtime import Runtime


class BackfillRefused(ValueError):
    """A range no job should be recorded for; the message names the values."""


def start_backfill(rt: Runtime, since: datetime, until: datetime) -> Job:
    if until <= since:
        raise BackfillRefused(f"until {format_wire(until)} must be after since {format_wire(since)}")
    s = rt.settings
    return JobStore(rt.redis, s.redis_prefix).create(
        since, until, slice_s=int(s.slice_days * 86400), synced=saved_count(rt.redis, s.redis_prefix))
