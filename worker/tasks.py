"""The worker's task: thin. It runs worker.sync.sync_one and carries out what `errors.resolve` decides:
a wait (rate limit), a pause (circuit breaker), a retry or a dead letter."""
from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Reject

from shared.bip.lookup import Unproven
from shared.core import metrics
from shared.core.errors import (
    Action,
    ConfigurationError,
    MappingError,
    RetryPolicy,
    StockoutSyncError,
    foreign,
    resolve,
)
from shared.core.settings import Settings
from shared.deadletters.model import DeadLetter, stage_of
from shared.deadletters.store import DeadLetterStore
from shared.mapping.model import Mapping, MappingFileError
from shared.queue.app import SYNC_TASK, app
from shared.queue.events import DEAD_LETTERED_EVENT, dlq_hint
from shared.queue.publisher import message_label, publish_stockout
from shared.redis import breaker
from shared.redis.breaker import DEAD_LETTER_SCOPE, Opened
from shared.redis.epoch import StatePaused
from shared.redis.state import order_no_of, stockout_key
from shared.runtime import Runtime, runtime
from worker import attempts
from worker.events import task_event
from worker.sync import Deferred, sync_one
from worker.transform import locate_rejection

log = logging.getLogger("stockout_sync.worker")
MAPPING_WAIT_S = 5.0  # the cache looks at the file every second; an operator's fix takes longer


def classify(error: BaseException) -> BaseException:
    """Errors from below our own hierarchy, as the kinds they are."""
    if (ours := foreign(error)) is not None:
        return ours
    if isinstance(error, MappingFileError):
        # no mapping to work with at all: every stockout would fail alike, so it pauses
        return ConfigurationError(f"mapping file unreadable — check MAPPING_FILE: {error}", api="mapping")
    return error


def policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(settings.max_attempts, settings.retry_backoff_base_s, settings.retry_backoff_max_s)


def pause_countdown(settings: Settings) -> float:
    # about one probe interval: sooner would only find the breaker still open
    return settings.breaker_probe_interval_s * random.uniform(1.0, 1.25)


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
    prefix = rt.settings.redis_prefix
    sid = stockout_key(stockout)
    started = time.monotonic()
    # `attempt` is the real attempt once a message has been retried (the success line looks it up)
    about = {"stockout": stockout, "task_id": self.request.id, "attempt": self.request.retries + 1, "started": started}
    # The raises below happen outside the except blocks on purpose: an implicitly chained
    # exception drags every frame of the original traceback through the pool's result pipe.
    failure: BaseException | None = None
    paused: Opened | None = None
    clock = rt.clock.beyond_token_window()
    metrics.CLOCK_SKEW.set(rt.clock.off_by())
    if clock is not None:
        raise clock_pause(rt, sid, clock, about)
    try:
        paused = rt.breaker.blocking()
        if paused is None:
            # generation > 0: a record re-created after it was deleted in BIP (reconcile --requeue-missing)
            outcome = sync_one(stockout, rt, task_id=self.request.id, generation=generation,
                               redelivered=redelivered(self))
    except Deferred as deferred:
        # Not a failure: a duplicate message met the one being worked on. Look again later.
        failure = deferred
    except (StatePaused, Unproven) as waiting:
        failure = waiting
    except Exception as raw_error:  # every failure ends in a retry, a pause or a dead letter, never silence
        failure = raw_error
    if paused is not None:
        countdown = pause_countdown(rt.settings)
        metrics.observe_deferred("paused")
        task_event(logging.INFO, f"stockout {sid} waits: {paused.api} paused since {paused.since} ({paused.cause}); "
                   f"again in {countdown:.0f} s", **about, outcome="paused", stage="breaker",
                   retry_in_s=round(countdown, 1))
        raise retry_or_requeue(self, countdown=countdown)
    if failure is None:
        if outcome.outcome != "already_done":
            rt.breaker.succeeded(("bip", "mapping"))
        if self.request.retries:
            # the real attempt (waits for rate limits, the breaker or the mapping are not attempts)
            about["attempt"] = attempts.failed_so_far(rt.redis, prefix, sid) + 1
            attempts.forget(rt.redis, prefix, sid)
        task_event(logging.INFO, f"stockout {outcome.stockout_id} {outcome.outcome}", **about, outcome=outcome.outcome,
                   stage="save" if outcome.outcome != "already_done" else "dedup", bip_id=outcome.bip_id,
                   bip_code=outcome.bip_code)
        return outcome.model_dump()
    if isinstance(failure, Deferred):
        metrics.observe_deferred("locked")
        task_event(logging.INFO, f"stockout {sid} is being worked on by another task; later",
                   **about, outcome="deferred", stage="dedup", retry_in_s=failure.wait_s + 1)
        raise retry_or_requeue(self, countdown=failure.wait_s + 1)
    if isinstance(failure, (StatePaused, Unproven)):
        # Waiting is not failing: no attempt is used, so no lost state or silent BIP dead-letters it
        countdown = pause_countdown(rt.settings)
        reason = "state" if isinstance(failure, StatePaused) else "unproven"
        metrics.observe_deferred(reason)
        task_event(logging.WARNING, f"stockout {sid} waits: {failure}; again in {countdown:.0f} s", **about,
                   outcome="paused" if reason == "state" else "retry", stage=reason, retry_in_s=round(countdown, 1))
        raise retry_or_requeue(self, countdown=countdown)
    if waits_for_mapping(failure, rt):
        metrics.observe_deferred("mapping")
        task_event(logging.WARNING, f"stockout {sid} waits for a valid mapping file ({failure}); "
                   f"again in {MAPPING_WAIT_S:.0f} s", **about, outcome="retry", stage=stage_of(failure), error=failure,
                   retry_in_s=MAPPING_WAIT_S)
        raise retry_or_requeue(self, countdown=MAPPING_WAIT_S)  # attempts are counted on failures only
    return act(self, rt, stockout, sid, classify(failure), about)


def clock_pause(rt: Runtime, sid: str, why: str, about: dict[str, Any]) -> Reject:
    """A worker whose clock is far off would only have every BIP token request refused (and dead-letter
    each stockout): it holds the message a probe interval, then puts it back on the queue as it was.
    Not a retry with a countdown: its ETA would be reckoned by the wrong clock."""
    wait_s = pause_countdown(rt.settings)
    metrics.observe_deferred("clock")
    task_event(logging.WARNING, f"stockout {sid} waits: {why}; back on the queue in {wait_s:.0f} s", **about,
               outcome="paused", stage="clock", retry_in_s=round(wait_s, 1))
    time.sleep(wait_s)
    return Reject(f"this host's clock: {why}", requeue=True)


def redelivered(task: Task) -> bool:
    """Whether the broker handed this message out before (kombu marks a restored message so)."""
    info = task.request.delivery_info or {}
    return bool(info.get("redelivered") or getattr(task.request, "redelivered", False))


def waits_for_mapping(error: BaseException, rt: Runtime) -> bool:
    """While the mapping file does not validate, a stockout the last good mapping cannot express may
    need just what the new file adds: it waits for the fix rather than become a dead letter. (No mapping
    at all, MappingFileError, pauses the whole `mapping` scope instead: see classify.)

    The file is looked at again first: the cache looks once a second, and a stockout run in the second
    after the file was saved broken would otherwise be judged as if nothing had changed."""
    if not isinstance(error, MappingError):
        return False
    rt.current_mapping(fresh=True)
    return rt.mappings.problem is not None


def act(task: Task, rt: Runtime, stockout: dict, sid: str, error: BaseException, about: dict[str, Any]) -> NoReturn:
    """Carry out what `resolve` decides about a failed run: wait, pause, retry or dead-letter."""
    prefix = rt.settings.redis_prefix
    decision = resolve(error, attempts.failed_so_far(rt.redis, prefix, sid) + 1, policy(rt.settings))
    kind = decision.kind.value
    if decision.action is Action.WAIT_RATE_LIMITED:
        # a wait, not a failure: no attempt is used, so no number of refusals can dead-letter it
        metrics.observe_deferred("rate_limited")
        api = getattr(error, "api", "")
        task_event(logging.INFO, f"stockout {sid}: {api} rate limited; again in {decision.delay_s:.1f} s",
                   **about, outcome="rate_limited", stage=stage_of(error), error=error, kind=kind,
                   retry_in_s=round(decision.delay_s, 3))
        raise retry_or_requeue(task, countdown=decision.delay_s)
    if decision.action is Action.PAUSE:
        api = getattr(error, "api", "") or "bip"
        rt.breaker.trip(str(error), api)
        countdown = pause_countdown(rt.settings)
        metrics.observe_deferred("paused")
        task_event(logging.WARNING, f"stockout {sid} waits: configuration error ({type(error).__name__}: {error}); "
                   f"{api} paused, again in {countdown:.0f} s", **about, outcome="paused", stage=stage_of(error),
                   error=error, kind=kind, retry_in_s=round(countdown, 1))
        raise retry_or_requeue(task, countdown=countdown)
    attempt = attempts.record_failure(rt.redis, prefix, sid)
    about = {**about, "attempt": attempt}
    if decision.action is Action.RETRY:
        task_event(logging.WARNING, f"stockout {sid} attempt {attempt} failed ({type(error).__name__}: {error}); "
                   f"retry in {decision.delay_s:.1f} s", **about, outcome="retry", stage=stage_of(error), error=error,
                   kind=kind, retry_in_s=round(decision.delay_s, 3))
        raise retry_or_requeue(task, countdown=decision.delay_s, exc=error)
    try:
        dead_letter(rt, stockout, sid, error, attempts=attempt, task_id=task.request.id)
    except Exception as dl_error:
        # No record, so the message must not be acked. It comes back after the longest backoff, not at
        # once: whatever stops one letter (Redis refusing writes, a store key of the wrong type) stops
        # every letter, and a requeue at once would spin every worker process on it.
        countdown = rt.settings.retry_backoff_max_s * random.uniform(0.5, 1.0)
        with contextlib.suppress(redis.RedisError):  # Redis itself may be what fails
            rt.breaker.trip(f"dead letters cannot be written ({type(dl_error).__name__}: {str(dl_error)[:200]})",
                            DEAD_LETTER_SCOPE)
        log.error("stockout %s could not be dead-lettered (%s: %.200s); again in %.0f s", sid,
                  type(dl_error).__name__, dl_error, countdown)
        raise retry_or_requeue(task, countdown=countdown) from None
    breaker.close(rt.redis, prefix, DEAD_LETTER_SCOPE, observer=metrics.BREAKER_OBSERVER)  # one step, letters are rare
    attempts.forget(rt.redis, prefix, sid)
    task_event(logging.ERROR, f"stockout {sid} dead-lettered after {attempt} attempt(s): {error}", **about,
               outcome="dead_letter", stage=stage_of(error), error=error, kind=kind)
    tell_flower(task, dlq_hint(sid, order_no_of(stockout)))
    # Raised so Flower shows the task failed and why; marked so Celery does not log it twice.
    with contextlib.suppress(AttributeError):  # an exception type without __dict__ is logged twice, no worse
        error.dead_lettered = True  # type: ignore[attr-defined]
    raise error


def tell_flower(task: Task, hint: str) -> None:
    """The task's page in Flower shows the `dlq show` line as its result (the state stays FAILURE)."""
    try:
        task.send_event(DEAD_LETTERED_EVENT, retry=False, result=hint)
    except Exception as err:  # the letter is written; only Flower's line is missing
        log.warning("Flower was not told of the dead letter (%s)", type(err).__name__)


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
    letter = DeadLetter.new(sid, error, stage=stage_of(error), stockout=stockout, attempts=attempts,
                            where=rejected_at(error, stockout, mapping), task_id=task_id, message_id=message_id,
                            mapping_fingerprint=fingerprint)
    # Record first, then the queue copy: a crash between them leaves a record `requeue` can act on.
    DeadLetterStore(rt.redis, rt.settings.redis_prefix).put(letter)
    publish_stockout.dead_letter_copy(letter)


def rejected_at(error: BaseException, stockout: dict, mapping: Mapping | None) -> str:
    """Where in the stockout the values BIP's refusal names came from ("" for any other failure)."""
    if mapping is None or not isinstance(error, StockoutSyncError) or error.api != "bip" or not error.api_message:
        return ""
    return locate_rejection(error.api_message, stockout, mapping)
