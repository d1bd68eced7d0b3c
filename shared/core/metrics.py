"""Prometheus counters and histograms of the producer, the worker and both API clients; it only counts
(exposing is `shared.observe.exporter`'s) and keeps labels bounded (docs/design.md, "Metrics")."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import prometheus_client
from prometheus_client import CollectorRegistry

_P = "stockout_sync"
# Not prometheus_client's default registry: Flower imports the tasks, hence this module, and would
# otherwise list these counters, all zero, beside its own. The exporter reads the processes' files.
REGISTRY = CollectorRegistry(auto_describe=True)
M = TypeVar("M")
_made: list[str] = []  # names of the instruments made so far, in this process
_declared: list[_Lazy] = []
_making = threading.Lock()


class _Lazy:
    """An instrument made on its first use, not at import: prometheus_client picks the way it stores
    a value (in memory, or in the multiprocess files of a worker's pool) when it makes one, so a
    process's exporter only has to start before the first count — any module may import this one."""

    def __init__(self, make: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._make, self._args, self._kwargs = make, args, kwargs
        self._real: Any = None
        _declared.append(self)

    def _get(self) -> Any:
        if self._real is None:
            with _making:
                if self._real is None:
                    self._real = self._make(*self._args, registry=REGISTRY, **self._kwargs)
                    _made.append(str(self._args[0]))
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


def _lazy(make: Callable[..., M]) -> Callable[..., M]:
    def factory(*args: Any, **kwargs: Any) -> M:
        kwargs.pop("registry", None)  # always REGISTRY
        return cast(M, _Lazy(make, args, kwargs))

    return factory


Counter = _lazy(prometheus_client.Counter)
Gauge = _lazy(prometheus_client.Gauge)
Histogram = _lazy(prometheus_client.Histogram)


def made() -> list[str]:
    """The instruments this process has made (used) so far: none before its exporter starts."""
    return list(_made)


def make_all() -> CollectorRegistry:
    """Every instrument made now (what a test lists against the rules and the dashboard)."""
    for instrument in _declared:
        instrument._get()
    return REGISTRY

# -- producer (beat side) -----------------------------------------------------------------------
FETCHED = Counter(f"{_P}_fetched", "Stockouts read from WDT by polls and backfills", registry=REGISTRY)
PUBLISHED = Counter(f"{_P}_published", "Stockout messages published to the stockouts queue", registry=REGISTRY)
NOT_PUBLISHED = Counter(  # reason: filtered, already_done, already_queued
    f"{_P}_not_published", "Stockouts read but not published, by reason", ["reason"], registry=REGISTRY
)
POLLS = Counter(f"{_P}_polls", "Polls by outcome: ok, skipped, failed", ["outcome"], registry=REGISTRY)
POLL_SECONDS = Histogram(  # outcome: ok, failed (a skipped poll does no work and is not timed)
    f"{_P}_poll_duration_seconds", "Duration of one poll, by outcome", ["outcome"], registry=REGISTRY,
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)

# -- worker -------------------------------------------------------------------------------------
SAVED = Counter(  # outcome: saved, replayed
    f"{_P}_saved", "Stockouts marked done after BIP answered, by outcome", ["outcome"], registry=REGISTRY
)
ALREADY_DONE = Counter(
    f"{_P}_already_done", "Messages for stockouts that were already done (duplicates stopped)", registry=REGISTRY
)
RETRIED = Counter(f"{_P}_retried", "Failed attempts that will be retried", ["stage", "error"], registry=REGISTRY)
DEAD_LETTERED = Counter(
    f"{_P}_dead_lettered", "Stockouts sent to the dead-letter queue", ["stage", "error"], registry=REGISTRY
)
MALFORMED = Counter(
    f"{_P}_malformed_messages", "Queue entries that were no runnable message, quarantined as dead letters", ["queue"],
    registry=REGISTRY,
)
MAPPING_INVALID = Gauge(  # the most recent process to look decides: 1 while the file does not validate
    f"{_P}_mapping_file_invalid", "1 while the mapping file does not validate and the last good mapping is used",
    registry=REGISTRY, multiprocess_mode="mostrecent",
)
CLOCK_SKEW = Gauge(  # every process of a host shares its clock: the latest reading stands
    f"{_P}_clock_skew_seconds", "This host's clock minus Redis TIME at its last reading (positive: ahead)",
    registry=REGISTRY, multiprocess_mode="mostrecent",
)
MAPPING_RELOAD_FAILURES = Counter(
    f"{_P}_mapping_reload_failures", "Changes of the mapping file that did not validate (the last good one stayed)",
    registry=REGISTRY,
)
TASK_SECONDS = Histogram(
    f"{_P}_task_duration_seconds", "One attempt of the sync task, by outcome", ["outcome"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# -- both API clients ---------------------------------------------------------------------------
API_CALLS = Counter(
    f"{_P}_api_requests", "HTTP calls to WDT and BIP, by endpoint and answer code", ["api", "endpoint", "code"],
    registry=REGISTRY,
)
API_SECONDS = Histogram(
    f"{_P}_api_request_duration_seconds", "Latency of HTTP calls to WDT and BIP", ["api", "endpoint"],
    registry=REGISTRY, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMIT_WAIT = Histogram(
    f"{_P}_rate_limit_wait_seconds", "Time spent waiting for the shared rate limiter before a call", ["limiter"],
    registry=REGISTRY, buckets=(0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# The shared rate and the breaker's state live in Redis: they are read at scrape time
# (shared.observe.gauges: rate_limit_rate_per_second, breaker_state), not kept per process.
RATE_LIMIT_REFUSALS = Counter(
    f"{_P}_rate_limit_refusals", "Calls the remote API refused as too frequent, by limiter; lowered: the refusal "
    "lowered the shared rate", ["limiter", "lowered"], registry=REGISTRY,
)

# -- the circuit breaker (shared.redis.breaker) ------------------------------------------------------
BREAKER_TRIPS = Counter(f"{_P}_breaker_trips", "Times the circuit breaker opened, by API", ["api"], registry=REGISTRY)
DEFERRED = Counter(
    f"{_P}_deferred", "Task runs put off without using an attempt, by reason: rate_limited, paused, locked, "
    "mapping, state (the Redis state lost), unproven (BIP could not prove a save absent), clock (this host's)",
    ["reason"], registry=REGISTRY,
)


class PageCounts(Protocol):
    """What `count_page` reads of the producer's PollSummary (shared does not import the producer)."""

    fetched: int
    published: int
    filtered_out: int
    already_done: int
    already_queued: int


def count_page(before: PageCounts, after: PageCounts) -> None:
    """What one page of a poll or backfill added to its summary (two PollSummary snapshots)."""
    FETCHED.inc(after.fetched - before.fetched)
    PUBLISHED.inc(after.published - before.published)
    for reason in ("filtered_out", "already_done", "already_queued"):
        delta = getattr(after, reason) - getattr(before, reason)
        if delta:
            NOT_PUBLISHED.labels(reason.replace("_out", "")).inc(delta)


def observe_poll(outcome: str, duration_s: float) -> None:
    POLLS.labels(outcome).inc()
    if outcome != "skipped":
        POLL_SECONDS.labels(outcome).observe(duration_s)


def observe_task(outcome: str, duration_s: float, *, stage: str = "", error: str = "") -> None:
    TASK_SECONDS.labels(outcome).observe(duration_s)
    if outcome in ("saved", "replayed"):
        SAVED.labels(outcome).inc()
    elif outcome == "already_done":
        ALREADY_DONE.inc()
    elif outcome == "retry":
        RETRIED.labels(stage, error).inc()
    elif outcome == "dead_letter":
        DEAD_LETTERED.labels(stage, error).inc()


def observe_api_call(api: str, url: str, form: Any, duration_s: float, code: str) -> None:
    endpoint = endpoint_of(url, form)
    if api == "wdt":
        WDT_CALLS.labels(_wdt_purpose.get()).inc()
    API_CALLS.labels(api, endpoint, code).inc()
    API_SECONDS.labels(api, endpoint).observe(duration_s)


def endpoint_of(url: str, form: Any) -> str:
    # Every WDT method shares one gateway path; the method names the endpoint.
    if isinstance(form, dict) and form.get("method"):
        return str(form["method"])
    return urlsplit(url).path or "/"


def observe_rate_limit_wait(limiter: str, waited_s: float) -> None:
    RATE_LIMIT_WAIT.labels(limiter).observe(waited_s)


def observe_breaker(api: str, is_open: bool, *, tripped: bool = False) -> None:
    if tripped:
        BREAKER_TRIPS.labels(api).inc()


def observe_deferred(reason: str) -> None:
    DEFERRED.labels(reason).inc()


class _LimiterMetrics:
    """The metrics side of `shared.redis.ratelimit.LimiterObserver`: the limiter calls it, nothing is patched."""

    def waited(self, name: str, seconds: float) -> None:
        RATE_LIMIT_WAIT.labels(name).observe(seconds)

    def refusal(self, name: str, *, lowered: bool) -> None:
        RATE_LIMIT_REFUSALS.labels(name, "yes" if lowered else "no").inc()


LIMITER_OBSERVER = _LimiterMetrics()


class _BreakerMetrics:
    """The metrics side of `shared.redis.breaker.BreakerObserver`."""

    def breaker(self, api: str, is_open: bool, *, tripped: bool = False) -> None:
        observe_breaker(api, is_open, tripped=tripped)


BREAKER_OBSERVER = _BreakerMetrics()


# -- WDT quota by purpose, backfill jobs, backlog (issue 12) ------------------------------------
# WDT's quota (60 calls a minute) is shared by everything that reads it; this says who spent it.
WDT_CALLS = Counter(  # purpose: poll, lookback, backfill, reconcile, preview, other
    f"{_P}_wdt_calls", "WDT calls by purpose", ["purpose"], registry=REGISTRY
)
BACKFILL_JOBS = Gauge(
    f"{_P}_backfill_jobs_running", "Backfill jobs not yet finished (as the producer last saw them)",
    registry=REGISTRY, multiprocess_mode="mostrecent",
)
BACKLOG = Gauge(
    f"{_P}_backlog_messages", "Stockout messages in Redis (queues + unacked), as the producer last measured",
    registry=REGISTRY, multiprocess_mode="mostrecent",
)
_wdt_purpose: ContextVar[str] = ContextVar("wdt_purpose", default="other")


@contextmanager
def wdt_purpose(purpose: str) -> Iterator[None]:
    """WDT calls made inside are counted under `purpose`."""
    token = _wdt_purpose.set(purpose)
    try:
        yield
    finally:
        _wdt_purpose.reset(token)


# -- alerts (beat side) -------------------------------------------------------------------------
ALERTS = Counter(  # outcome: delivered, failed (after the channel's retries)
    f"{_P}_alerts", "Alert messages, by kind, channel and outcome", ["kind", "channel", "outcome"], registry=REGISTRY
)


def observe_alert(kind: str, channel: str, delivered: bool) -> None:
    ALERTS.labels(kind, channel, "delivered" if delivered else "failed").inc()
