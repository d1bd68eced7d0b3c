"""Sync one stockout, the plain function behind the worker's task: skip if done → lock → transform →
save with the resubmitCheckKey → mark done. Why each step may repeat: docs/design.md, "Syncing one stockout"."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Literal

import redis
from pydantic import BaseModel

from shared.runtime import Runtime
from shared.state import order_no_of, stockout_key
from worker.transform import to_bip, validate_stockout

log = logging.getLogger("stockout_sync.worker")

LOCK_MARGIN_S = 30


class Deferred(Exception):
    """Another task holds this stockout's lock; run again when it may have finished."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"stockout locked by another task for {wait_s:.1f} s more")
        self.wait_s = wait_s


class Outcome(BaseModel):
    stockout_id: str
    order_no: str = ""
    outcome: Literal["saved", "replayed", "already_done"]
    bip_id: str = ""
    bip_code: str = ""
    generation: int = 0
    duration_s: float = 0.0


def sync_one(raw: dict, rt: Runtime, *, task_id: str, generation: int = 0) -> Outcome:
    started = time.monotonic()
    sid = stockout_key(raw)
    order_no = order_no_of(raw)
    store = rt.store
    # The done mark and the lock in one atomic step: a holder we had to wait for may have saved it.
    claim = store.claim(sid, task_id, rt.settings.task_time_limit_s + LOCK_MARGIN_S)
    done = claim.done
    if done is not None:
        return Outcome(
            stockout_id=sid, order_no=order_no, outcome="already_done", bip_id=done.bip_id, bip_code=done.bip_code
        )
    if not claim.acquired:
        raise Deferred(claim.wait_s)
    # A reconcile that re-created the record wrote its generation into the mark (`q|g`): a message
    # that does not carry it (a dead letter requeued, an older copy) must not go out under the
    # deleted record's key, which BIP would only answer with that record.
    generation = max(generation, claim.generation)
    try:
        record = to_bip(validate_stockout(raw), rt.mapping, generation=generation)
        result = rt.bip.save(record)
        store.finish(sid, task_id, result.id, result.code, generation)  # the done mark, then the lock goes
    except BaseException:
        with contextlib.suppress(redis.RedisError):  # the lock expires by itself
            store.release(sid, task_id)
        raise
    return Outcome(
        stockout_id=sid,
        order_no=order_no,
        outcome="replayed" if result.replayed else "saved",
        bip_id=result.id,
        bip_code=result.code,
        generation=generation,
        duration_s=round(time.monotonic() - started, 4),
    )
