"""The beat's tasks: thin, the work is in producer.poll and producer.reconcile."""
from __future__ import annotations

from producer import heartbeat
from producer.poll import OnQueue, poll_once
from producer.reconcile import run_daily
from producer.recover import recover_by_itself
from shared.celery_app import BACKFILL_QUEUE, POLL_TASK, RECONCILE_TASK, app
from shared.messages import publish_stockout
from shared.runtime import runtime

# Backfill jobs get half of each poll interval: the next live poll never waits behind them.
BACKFILL_SHARE = 0.5


@app.task(name=POLL_TASK, acks_late=False)
def poll() -> dict:
    # acks_late off: a poll that dies is simply run again by the next beat; redelivering it would
    # only race that next one for the lock.
    rt = runtime()
    heartbeat.beat(rt.redis, rt.settings.redis_prefix)
    # a state Redis lost is rebuilt from BIP first, when beat's copy says from where (producer/recover.py)
    recover_by_itself(rt, publish_stockout)
    return poll_once(rt, publish_stockout, backfill_publish=OnQueue(publish_stockout, BACKFILL_QUEUE),
                     backfill_budget_s=rt.settings.poll_interval_s * BACKFILL_SHARE).model_dump()


@app.task(name=RECONCILE_TASK, acks_late=False)
def reconcile_daily() -> dict:
    # The whole report goes to Redis (shared.reconcile_reports); Flower gets the headline.
    report = run_daily(runtime())
    return {"since": report.since, "until": report.until, "mismatches": report.mismatches,
            "unverifiable": report.checks.unverifiable(), "exit_code": report.exit_code}
