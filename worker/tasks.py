"""The worker's task: thin. It runs worker.sync.sync_one and turns errors into retries or dead letters."""
from __future__ import annotations

import logging
import uuid

import redis
from celery.exceptions import SoftTimeLimitExceeded

from shared.celery_app import SYNC_TASK, app
from shared.errors import Action, APIConnectionError, StockoutSyncError, resolve
from shared.messages import publish_dead_letter
from shared.runtime import runtime
from shared.state import stockout_key
from worker.deadletter import DeadLetterStore, make_letter
from worker.sync import Deferred, sync_one

log = logging.getLogger("stockout_sync.worker")


def classify(error: BaseException) -> BaseException:
    """Errors from below our own hierarchy, as the transient errors they are."""
    if isinstance(error, redis.RedisError):
        return APIConnectionError(f"Redis unavailable: {type(error).__name__}", api="redis")
    if isinstance(error, SoftTimeLimitExceeded):
        return APIConnectionError("task ran out of time", should_retry=True)
    return error


@app.task(name=SYNC_TASK, bind=True, acks_late=True, max_retries=None)
def sync_stockout(self, stockout: dict) -> dict:
    rt = runtime()
    attempt = self.request.retries + 1
    try:
        outcome = sync_one(stockout, rt, task_id=self.request.id)
    except Deferred as deferred:
        # Not a failure: a duplicate message met the one being worked on. Look again later.
        raise self.retry(countdown=deferred.wait_s + 1)
    except Exception as raw_error:  # every failure ends in a retry or a dead letter, never silence
        error = classify(raw_error)
        decision = resolve(error, attempt, base_s=rt.settings.retry_backoff_base_s, max_s=rt.settings.retry_backoff_max_s)
        sid = stockout_key(stockout)
        if decision.action is not Action.FAIL and attempt < rt.settings.max_attempts:
            log.warning(
                "stockout %s attempt %d failed (%s: %s); retry in %.1f s",
                sid, attempt, type(error).__name__, error, decision.delay_s,
            )
            raise self.retry(countdown=decision.delay_s, exc=error)
        dead_letter(rt, stockout, sid, error, attempts=attempt, task_id=self.request.id)
        log.error("stockout %s dead-lettered after %d attempt(s): %s", sid, attempt, error)
        if error is raw_error:
            raise
        raise error from None
    log.info("stockout %s %s (BIP id %s, code %s)", outcome.stockout_id, outcome.outcome, outcome.bip_id, outcome.bip_code)
    return outcome.model_dump()


def dead_letter(rt, stockout: dict, sid: str, error: BaseException, *, attempts: int, task_id: str) -> None:
    try:
        fingerprint = rt.mapping.fingerprint()
    except Exception:  # a broken mapping file must not stop the letter from being written
        fingerprint = ""
    message_id = f"dlq-{uuid.uuid4()}"
    letter = make_letter(
        stockout, sid, error, attempts=attempts, task_id=task_id, message_id=message_id, mapping_fingerprint=fingerprint
    )
    # Record first, then the queue copy: a crash between them leaves a record `requeue` can act on.
    DeadLetterStore(rt.redis, rt.settings.redis_prefix).put(letter)
    publish_dead_letter(stockout, sid, message_id)
