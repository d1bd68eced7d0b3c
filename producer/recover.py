"""`recover`: after Redis lost or replaced its state, rebuild the done marks from BIP (reconcile's
verified look-ups), publish what is proven absent, restore the cursor and the epoch, then close the
`state` scope. Why and when it runs by itself: docs/design.md, "Exactly once when memories fail"."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from producer.reconcile.run import BipRow, Reconcile, Report
from shared.core import metrics
from shared.core.timeutil import format_wire, now_beijing, parse_wire
from shared.redis import breaker, epoch

if TYPE_CHECKING:
    from shared.runtime import Runtime

log = logging.getLogger("stockout_sync.recover")
SHOWN = 50


class Recovered(BaseModel):
    since: str
    until: str
    fetched: int = 0
    marked_done: int = 0  # proven in BIP: their done marks rebuilt
    requeued: list[str] = Field(default_factory=list)  # proven absent: published again
    unknown: list[str] = Field(default_factory=list)  # neither proven: their saves prove absence first
    unknown_total: int = 0
    cursor: str = ""
    epoch: str = ""
    closed: bool = False  # the `state` scope was open and is closed now


def recover(rt: Runtime, since: datetime, until: datetime, *, publish: Callable[..., Any],
            cursor: datetime | None = None, on_page: Callable[[Report], None] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> Recovered:
    """Rebuild the state for stockouts modified in [since, until]. Polling goes on from `cursor`
    (default `until`) minus the lookback: the lookback's ledger of counts was lost with the state,
    so those slices are read again as live ones (the rebuilt marks publish nothing twice)."""
    store = rt.store
    marked = 0

    def present(sid: str, row: BipRow) -> None:
        nonlocal marked
        if store.done(sid) is None:
            store.mark_done(sid, row.id, row.code)
            marked += 1

    job = Reconcile(rt, keep_raw=True, on_present=present, sleep=sleep)
    report = job.run(since, until, on_page=on_page)
    job.requeue_missing(report, publish)
    store.advance_cursor(max(since, (cursor or until) - timedelta(seconds=rt.settings.lookback_s)))
    s = rt.settings
    found = epoch.create(rt.redis, s.redis_prefix, recovered=True)
    closed = breaker.close(rt.redis, s.redis_prefix, epoch.SCOPE, observer=metrics.BREAKER_OBSERVER)
    result = Recovered(
        since=report.since, until=report.until, fetched=report.fetched, marked_done=marked,
        requeued=report.requeued, unknown=[u.stockout_id for u in report.unknown][:SHOWN],
        unknown_total=len(report.unknown), cursor=format_wire(store.cursor() or until), epoch=found.id, closed=closed,
    )
    log.warning("state recovered for %s → %s: %d done marks rebuilt from BIP, %d proven absent and published, "
                "%d unknown (each proves absence before its save); epoch %s, cursor %s", result.since, result.until,
                marked, len(result.requeued), result.unknown_total, found.id, result.cursor,
                extra={"stage": "recover", "outcome": "recovered"})
    return result


def recover_by_itself(rt: Runtime, publish: Callable[..., Any]) -> Recovered | None:
    """Beat's automatic recovery, before a poll: only when AUTO_RECOVER is on, the state is gone (no
    epoch at all: not another deployment's state, which is an operator's to judge) and beat's copy
    says from where to rebuild (the lookback before its cursor, or a running backfill's start)."""
    s = rt.settings
    if not s.auto_recover or not s.state_copy_file or epoch.read(rt.redis, s.redis_prefix) is not None:
        return None
    kept = epoch.StateCopy(s.state_copy_file).load()
    since = _time(kept.recover_from) if kept else None
    if kept is None or since is None:
        return None
    token = f"recover-{time.time_ns()}"
    if not rt.store.acquire_poll_lock(token, s.poll_lock_ttl_s):
        return None  # another beat's poll or recovery is running
    try:
        until = now_beijing() - timedelta(seconds=s.settle_s)
        epoch.pause(rt.redis, s.redis_prefix, f"Redis lost its state (epoch {kept.epoch}); beat recovers it by "
                    f"itself from {kept.recover_from}", probe_interval_s=s.breaker_probe_interval_s,
                    observer=metrics.BREAKER_OBSERVER)

        def renew(_: Report) -> None:
            rt.store.renew_poll_lock(token, s.poll_lock_ttl_s)

        return recover(rt, since, max(until, since), publish=publish, cursor=_time(kept.cursor), on_page=renew)
    finally:
        rt.store.release_poll_lock(token)


def _time(text: str) -> datetime | None:
    try:
        return parse_wire(text) if text else None
    except ValueError:
        return None
