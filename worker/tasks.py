"""The worker's task: thin. It runs worker.sync.sync_one and turns errors into retries or dead letters."""
from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded

from shared.celery_app import SYNC_TASK, app
from shared.deadletters import DeadLetterStore
from shared.errors import Action, APIConnectionError, MappingError, resolve
from shared.mapping import MappingFileError
from shared.messages import message_label, publish_dead_letter
from shared.runtime import Runtime, runtime
from shared.state import stockout_key
from worker.events import task_event
from worker.letters import make_letter, stage_of
from worker.sync import Deferred, sync_one

log = logging.getLogger("stockout_sync.worker")
MAPPING_WAIT_S = 5.0  # the cache looks at the file every second; an operator's fix takes longer


def classify(error: BaseException) -> BaseException:
    """Errors from below our own hierarchy, as the transient errors they are."""
    if isinstance(error, redis.RedisError):
        return APIConnectionError(f"Redis unavailable: {type(error).__name__}", api="redis")
    if isinstance(error, SoftTimeLimitExceeded):
        return APIConnectionError("task ran out of time", should_retry=True)
    return error


class _DeadLetteredMeta(type):
    def __instancecheck__(cls, error: object) -> bool:
        return bool(getattr(error, "dead_lettered", False))


class DeadLettered(Exception, metaclass=_DeadLetteredMeta):
    """What `throws=` names: any error this task raised after dead-lettering it (marked so). Celery
    logs those at INFO ("raised expected"): the task has already logged the one ERROR line, with
    the reason. An error raised any other way (a bug here) still gets Celery's ERROR and traceback."""


@app.task(name=SYNC_TASK, bind=True, acks_late=True, max_retries=None, throws=(DeadLettered,))
def sync_stockout(self: Task, stockout: dict, generation: int = 0) -> dict:
    rt = runtime()
    attempt = self.request.retries + 1
    started = time.monotonic()
    about = {"stockout": stockout, "task_id": self.request.id, "attempt": attempt, "started": started}
    # The raises below happen outside the except blocks on purpose: an implicitly chained
    # exception drags every frame of the original traceback through the pool's result pipe.
    failure: BaseException | None = None
    try:
        # generation > 0: a record re-created after it was deleted in BIP (reconcile --requeue-missing)
        outcome = sync_one(stockout, rt, task_id=self.request.id, generation=generation)
    except Deferred as deferred:
        # Not a failure: a duplicate message met the one being worked on. Look again later.
        failure = deferred
    except Exception as raw_error:  # every failure ends in a retry or a dead letter, never silence
        failure = raw_error
    if failure is None:
        task_event(
            logging.INFO,
            f"stockout {outcome.stockout_id} {outcome.outcome}",
            **about,
            outcome=outcome.outcome,
            stage="save" if outcome.outcome != "already_done" else "dedup",
            bip_id=outcome.bip_id,
            bip_code=outcome.bip_code,
        )
        return outcome.model_dump()
    if isinstance(failure, Deferred):
        task_event(logging.INFO, f"stockout {stockout_key(stockout)} is being worked on by another task; later",
                   **about, outcome="deferred", stage="dedup", retry_in_s=failure.wait_s + 1)
        raise retry_or_requeue(self, countdown=failure.wait_s + 1)

    if waits_for_mapping(failure, rt):
        task_event(logging.WARNING, f"stockout {stockout_key(stockout)} waits for a valid mapping file ({failure}); "
                   f"again in {MAPPING_WAIT_S:.0f} s", **about, outcome="retry", stage=stage_of(failure), error=failure,
                   retry_in_s=MAPPING_WAIT_S)
        raise wait_without_attempt(self, countdown=MAPPING_WAIT_S)

    error = classify(failure)
    decision = resolve(error, attempt, base_s=rt.settings.retry_backoff_base_s, max_s=rt.settings.retry_backoff_max_s)
    sid = stockout_key(stockout)
    if decision.action is not Action.FAIL and attempt < rt.settings.max_attempts:
        task_event(logging.WARNING, f"stockout {sid} attempt {attempt} failed ({type(error).__name__}: {error}); "
                   f"retry in {decision.delay_s:.1f} s", **about, outcome="retry", stage=stage_of(error), error=error,
                   retry_in_s=round(decision.delay_s, 3))
        raise retry_or_requeue(self, countdown=decision.delay_s, exc=error)
    try:
        dead_letter(rt, stockout, sid, error, attempts=attempt, task_id=self.request.id)
    except Exception as dl_error:
        # No record, so the message must not be acked: back on the queue, it is tried again.
        log.error("stockout %s could not be dead-lettered (%s); requeued", sid, type(dl_error).__name__)
        raise Reject(f"dead-lettering failed: {type(dl_error).__name__}", requeue=True) from None
    task_event(logging.ERROR, f"stockout {sid} dead-lettered after {attempt} attempt(s): {error}", **about,
               outcome="dead_letter", stage=stage_of(error), error=error)
    # Raised so Flower shows the task failed and why; marked so Celery does not log it twice.
    with contextlib.suppress(AttributeError):  # an exception type without __dict__ is logged twice, no worse
        error.dead_lettered = True  # type: ignore[attr-defined]
    raise error


def waits_for_mapping(error: BaseException, rt: Runtime) -> bool:
    """While the mapping file does not validate, a stockout the last good mapping cannot express may
    need just what the new file adds: it waits for the fix rather than become a dead letter."""
    return isinstance(error, MappingFileError) or (isinstance(error, MappingError) and rt.mappings.problem is not None)


def wait_without_attempt(task: Task, countdown: float) -> BaseException:
    """Run again later without counting an attempt (waiting is not failing): `task.retry` with the
    message's retry count kept as it is, so the attempts left after the wait are the same as before."""
    request = task.request
    later = task.signature_from_request(request, None, None, countdown=countdown, retries=request.retries)
    try:
        later.apply_async()
    except Exception as err:  # not published (broker down): put the message back, as retry_or_requeue does
        return Reject(f"could not schedule the wait: {type(err).__name__}", requeue=True)
    return Retry(when=countdown, sig=later)


def retry_or_requeue(task: Task, **options: Any) -> BaseException:
    """`task.retry`, except that a retry which cannot be published (broker down) puts the message
    back instead of dropping it: Celery's own answer to that is Reject(requeue=False), a loss."""
    # The retry is a new message: without the first publish's short label, Flower would show the
    # whole stockout (receiver name, mobile, address) as its kwargs.
    stockout = (task.request.kwargs or {}).get("stockout")
    if isinstance(stockout, dict):
        options.update(kwargsrepr=message_label(stockout, stockout_key(stockout)), argsrepr="()")
    try:
        return task.retry(throw=False, **options)
    except Reject as rejected:
        return Reject(rejected.reason, requeue=True)


def dead_letter(rt: Runtime, stockout: dict, sid: str, error: BaseException, *, attempts: int, task_id: str) -> None:
    try:
        mapping = rt.mapping
        fingerprint = mapping.fingerprint()
    except Exception:  # a broken mapping file must not stop the letter from being written
        mapping, fingerprint = None, ""
    message_id = f"dlq-{uuid.uuid4()}"
    letter = make_letter(
        stockout, sid, error, attempts=attempts, task_id=task_id, message_id=message_id,
        mapping_fingerprint=fingerprint, mapping=mapping,
    )
    # Record first, then the queue copy: a crash between them leaves a record `requeue` can act on.
    DeadLetterStore(rt.redis, rt.settings.redis_prefix).put(letter)
    publish_dead_letter(stockout, sid, message_id)
