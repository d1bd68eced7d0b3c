"""Sync one stockout, the plain function behind the worker's task: skip if done → lock → transform →
save with the resubmitCheckKey → mark done. Why each step may repeat: docs/design.md, "Syncing one stockout"."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Literal

import redis
from pydantic import BaseModel

from shared.bip import lookup
from shared.bip.idempotency import our_keys
from shared.bip.models import OthOutRecord, SaveResult
from shared.redis.epoch import Epoch, StatePaused
from shared.redis.state import order_no_of, stockout_key
from shared.runtime import Runtime
from shared.wdt.models import Stockout
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


def sync_one(raw: dict, rt: Runtime, *, task_id: str, generation: int = 0, redelivered: bool = False) -> Outcome:
    started = time.monotonic()
    sid = stockout_key(raw)
    order_no = order_no_of(raw)
    store = rt.store
    epoch = rt.state_guard.check()  # StatePaused: the state is gone or replaced, nothing may be saved
    # The done mark and the lock in one atomic step: a holder we had to wait for may have saved it.
    claim = store.claim(sid, task_id, rt.settings.task_time_limit_s + LOCK_MARGIN_S, epoch.id)
    if claim.lost:  # the state went between the guard's look and the claim: the guard says how, then pauses
        rt.state_guard.recheck()
        raise StatePaused("the state changed while this stockout was claimed")
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
        stockout = validate_stockout(raw)
        account = rt.settings.key_account
        record = to_bip(stockout, rt.mapping, generation=generation, account=account)
        keys = our_keys(sid, account, generations=generation, legacy=epoch.verify_before > 0)
        result = save_once(rt, stockout, record, keys, epoch, generation=generation, redelivered=redelivered)
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


def save_once(rt: Runtime, stockout: Stockout, record: OthOutRecord, keys: frozenset[str], epoch: Epoch, *,
              generation: int, redelivered: bool) -> SaveResult:
    """The save, sent blind only while BIP surely remembers its key; otherwise BIP's verified answer
    first (shared/bip/lookup.py): our record found is the result, a foreign one holding our code a
    dead letter, "cannot tell" a wait (`lookup.Unproven`)."""
    sid = stockout.stockout_id
    since_first, _ = rt.store.sending(sid, generation)
    why = must_prove(rt, stockout, since_first, epoch, redelivered)
    if why:
        log.info("stockout %s: %s; proving it absent in BIP before saving", sid, why,
                 extra={"stage": "save", "outcome": "verify"})
        held = lookup.prove(rt.bip, sid, record.code, keys)
        if isinstance(held, lookup.Found):
            log.info("stockout %s is in BIP already (record %s): not saved again", sid, held.id,
                     extra={"stage": "save", "outcome": "replayed"})
            return SaveResult(id=held.id, code=held.code, replayed=True)
        if isinstance(held, lookup.Foreign):
            raise held.error(sid)
        rt.store.sending(sid, generation, reset=True)  # proven absent: whatever BIP forgot no longer matters
    return rt.bip.save(record, keys=keys)


def must_prove(rt: Runtime, stockout: Stockout, since_first: float | None, epoch: Epoch, redelivered: bool) -> str:
    """Why this save's key may be one BIP has forgotten ("" when it surely remembers or never saw it)."""
    memory = rt.settings.bip_key_memory_s
    if redelivered:
        # a worker died with it: maybe after BIP stored it, and redelivery may come later than BIP's memory
        return "its message was redelivered (a worker died with it)"
    if since_first is not None and since_first >= memory / 2:
        return f"its key was first sent {since_first:.0f} s ago (BIP_KEY_MEMORY_S={memory})"
    if since_first is None and epoch.verify_before:
        # only shipped stockouts are saved: one consigned after the state began cannot have been saved before it
        consigned = stockout.consign_time.timestamp() if stockout.consign_time is not None else None
        if consigned is None or consigned <= epoch.verify_before:
            how = "recovered" if epoch.recovered else "inherited from an older version"
            return f"the state was {how} after this stockout was consigned"
    return ""
