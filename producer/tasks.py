"""The beat's tasks: thin, the work is in producer.poll, producer.backfill.walk and producer.reconcile.run."""
from __future__ import annotations

from producer import heartbeat
from producer.backfill.walk import backfill_once
from producer.poll import OnQueue, poll_once
from producer.reconcile.run import run_daily
from producer.recover import recover_by_itself
from shared.queue.app import BACKFILL_TASK, POLL_TASK, RECONCILE_TASK, app
from shared.queue.publisher import publish_stockout
from shared.redis.keys import BACKFILL_QUEUE
from shared.runtime import runtime

# A backfill run ends (between slices) before the next one is due, so runs follow each other rather
# than meet at the lock; the live poll runs beside them in another process of the beat.
BACKFILL_SHARE = 0.9


@app.task(name=POLL_TASK, acks_late=False)
def poll() -> dict:
    # acks_late off: a poll that dies is simply run again by the next beat; redelivering it would
    # only race that next one for the lock.
    rt = runtime()
    heartbeat.beat(rt.redis, rt.settings.redis_prefix)
    # a state Redis lost is rebuilt from BIP first, when beat's copy says from where (producer/recover.py)
    recover_by_itself(rt, publish_stockout)
    return poll_once(rt, publish_stockout).model_dump()


@app.task(name=BACKFILL_TASK, acks_late=False)
def backfill() -> dict:
    # its own task and lock: a live poll never waits for a backfill read (docs/design.md, "Live first")
    rt = runtime()
    return backfill_once(rt, OnQueue(publish_stockout, BACKFILL_QUEUE),
                         budget_s=rt.settings.poll_interval_s * BACKFILL_SHARE).model_dump()


@app.task(name=RECONCILE_TASK, acks_late=False)
def reconcile_daily() -> dict:
    # The whole report goes to Redis (producer.reconcile.reports); Flower gets the headline.
    report = run_daily(runtime())
    return {"since": report.since, "until": report.until, "mismatches": report.mismatches,
            "unverifiable": report.checks.unverifiable(), "exit_code": report.exit_code}
