"""The one retry loop: it carries out what `errors.resolve` decides for a call made in-process
(the worker's task acts through Celery instead). Rate-limit waits never use an attempt; a
configuration error opens the circuit breaker (when the caller gives one) and is raised at once.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from shared.core.errors import Action, Resolution, RetryPolicy, StockoutSyncError, resolve
from shared.core.settings import Settings

log = logging.getLogger("stockout_sync.retry")

T = TypeVar("T")

MAX_RATE_LIMIT_WAITS = 1000  # a server that refuses for ever must still end the loop


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str = "call",
    sleep: Callable[[float], None] = time.sleep,
    before: Callable[[], None] = lambda: None,
    on_pause: Callable[[StockoutSyncError], None] | None = None,
    classify: Callable[[BaseException], BaseException | None] | None = None,
) -> T:
    """`call()` until it succeeds or `resolve` says to stop. `before` runs ahead of every try (e.g.
    to renew a lock); `classify` says what a foreign exception (redis…) is as one of ours, or None to
    let it through at once. What is finally raised is always the original exception."""
    attempt, waits = 1, 0
    while True:
        before()
        try:
            return call()
        except Exception as raw:
            error = classify(raw) if classify is not None else raw
            if not isinstance(error, StockoutSyncError):
                raise
            decision = resolve(error, attempt, policy)
            if decision.action is Action.PAUSE and on_pause is not None:
                on_pause(error)
            if decision.action in (Action.PAUSE, Action.FAIL) or (
                decision.action is Action.WAIT_RATE_LIMITED and waits >= MAX_RATE_LIMIT_WAITS
            ):
                raise  # the original exception: what callers catch stays what they know
            _log(what, error, decision, attempt)
            if decision.uses_attempt:
                attempt += 1
            else:
                waits += 1
            sleep(decision.delay_s)


def _log(what: str, error: StockoutSyncError, decision: Resolution, attempt: int) -> None:
    if decision.action is Action.WAIT_RATE_LIMITED:
        log.info("%s rate limited (%s code %s); again in %.1f s", what, error.api, error.code, decision.delay_s)
    else:
        log.warning("%s failed (attempt %d: %s, code %s); again in %.1f s", what, attempt, type(error).__name__,
                    error.code, decision.delay_s)


IN_PROCESS_MAX_DELAY_S = 30.0  # a loop that holds a lock or keeps a person waiting never sleeps longer


def in_process_policy(settings: Settings, attempts: int) -> RetryPolicy:
    """The retry policy of a loop run in-process (a poll's page, a reconcile's lookup)."""
    delay = min(IN_PROCESS_MAX_DELAY_S, settings.retry_backoff_max_s)
    return RetryPolicy(attempts, settings.retry_backoff_base_s, delay)
