"""Gauges of the pipeline's state, read from Redis when Prometheus scrapes: queue depths, dead letters by
stage, cursor lag, the last successful poll and save, the circuit breaker, the shared rates.

Read at scrape time rather than set by one process: every number already lives in Redis, so any
worker's or beat's /metrics tells the same truth, and it stays true when the process that last
changed it is gone. Each scrape is one pipeline of cheap reads; the dead letters by stage are counted
once and then kept up to date from the new entries of the dead-letter index.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.core.settings import Settings
from shared.deadletters.model import STAGES, stored_stage
from shared.observe.snapshot import QUEUES, Snapshot
from shared.redis import breaker
from shared.redis.conn import connect
from shared.redis.durability import inspect as inspect_redis
from shared.redis.keys import Keys
from shared.redis.ratelimit import RateLimiter

log = logging.getLogger("stockout_sync.metrics")

_P = "stockout_sync"
# kombu's Redis transport keeps a message with priority p > 0 on a list of its own, `<queue>\x06\x16<p>`
BREAKER_STATES = ("closed", "half_open", "open")
DLQ_RECOUNT_S = 30.0


class PipelineCollector(Collector):
    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.p = settings.redis_prefix
        self.k = Keys(self.p)
        self._client = client
        self._lock = threading.Lock()
        self._dlq: tuple[tuple[int, float], float, dict[str, int]] | None = None  # (index shape, when, counts)

    @property
    def r(self) -> Any:
        if self._client is None:
            # short timeouts and no retries: a scrape answers `state_up 0` rather than hang
            s = self.settings
            self._client = connect(s.redis_url, s.redis_ca_certs, socket_connect_timeout=2, socket_timeout=5)
        return self._client

    def describe(self) -> list:
        return []  # unknown until Redis is read: the registry must not call collect() at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(f"{_P}_state_up", "1 when the pipeline's state could be read from Redis at this scrape")
        try:
            with self._lock:
                families = list(self._families())
        except Exception as err:  # a scrape must answer even when Redis does not
            log.warning("state metrics: Redis could not be read (%s)", type(err).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[GaugeMetricFamily]:
        snap = Snapshot.read(self.r, self.p)  # what `status` and beat's alerts judge from too
        now = snap.at
        depth = GaugeMetricFamily(f"{_P}_queue_depth", "Messages waiting on each queue (LLEN)", labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue], snap.queues.get(queue, 0))
        yield depth
        yield _gauge("in_flight", "Messages delivered to a worker and not yet acknowledged", snap.unacked)
        if snap.lag_s is not None:
            yield _gauge("cursor_lag_seconds", "How far the producer's cursor is behind now", snap.lag_s)
        poll_at = snap.poll_finished_at
        if poll_at is not None:
            yield _gauge("last_poll_success_timestamp_seconds", "When the last successful poll ended (epoch)", poll_at)
        yield _gauge("idle_polls", "Polls in a row whose live window was empty or inverted (a clock behind?)",
                     snap.idle_polls)
        r = self.r
        evicts = inspect_redis(r).evicts  # CONFIG GET (INFO when refused); unknown counts as 0
        yield _gauge("redis_evicting", "1 when Redis's maxmemory-policy may evict keys (done marks, the cursor)",
                     1 if evicts else 0)
        if snap.last_saved_at:
            yield _gauge("last_save_timestamp_seconds", "When a worker last saved a stockout to BIP (epoch)",
                         snap.last_saved_at)

        letters = GaugeMetricFamily(f"{_P}_dead_letters", "Dead letters waiting for an operator, by stage",
                                    labels=["stage"])
        newest = snap.newest_letter_at or 0.0
        for stage, count in self._dead_letters_by_stage(snap.dead_letters, newest, now).items():
            letters.add_metric([stage], count)
        yield letters

        yield breaker_family(snap.breaker)
        yield from self._rates()

    def _dead_letters_by_stage(self, total: int, newest: float, now: float) -> dict[str, int]:
        """Letters by stage. New letters (index score above the last one counted) are added as they
        come; a requeue, purge or re-failure breaks the sum, and then all are counted again, at most
        every DLQ_RECOUNT_S (until then the split shown is the last one counted)."""
        shape = (total, newest)
        if self._dlq is not None:
            (_, last_newest), counted_at, counts = self._dlq
            if self._dlq[0] == shape:
                return counts
            added = self._stages(self.r.zrangebyscore(self.k.dlq_index, f"({last_newest!r}", "+inf"))
            merged: dict[str, int] = {stage: counts.get(stage, 0) + added.get(stage, 0) for stage in STAGES}
            if sum(merged.values()) == total:
                self._dlq = (shape, counted_at, merged)
                return merged
            if now - counted_at < DLQ_RECOUNT_S:
                return counts
        self._dlq = (shape, now, self._stages(self.r.zrange(self.k.dlq_index, 0, -1)))
        return self._dlq[2]

    def _stages(self, members: list) -> dict[str, int]:
        counts: Counter[str] = Counter(dict.fromkeys(STAGES, 0))
        ids = [_text(i) for i in members]
        for start in range(0, len(ids), 1000):
            for value in self.r.mget([self.k.dlq_record(i) for i in ids[start:start + 1000]]):
                counts[_stage(value)] += 1
        return dict(counts)

    def _rates(self) -> Iterator[GaugeMetricFamily]:
        s = self.settings
        rate = GaugeMetricFamily(f"{_P}_rate_limit_rate_per_second",
                                 "The shared rate each limiter grants now (lower than the ceiling while adapting)",
                                 labels=["limiter"])
        ceiling = GaugeMetricFamily(f"{_P}_rate_limit_ceiling_per_second", "The configured rate of each limiter",
                                    labels=["limiter"])
        for name, configured in (("wdt", s.wdt_rate_per_minute / 60.0), ("bip", s.bip_rate_per_second)):
            limiter = RateLimiter(self.r, name, configured, prefix=self.p)
            current = configured
            # An adaptive limiter tells its current rate; one that does not runs at its ceiling.
            state = getattr(limiter, "state", None)
            if callable(state):
                try:
                    current = float(state().rate_per_s)
                except Exception as err:
                    log.debug("state metrics: rate of %s unreadable (%s)", name, type(err).__name__)
            rate.add_metric([name], current)
            ceiling.add_metric([name], configured)
        yield rate
        yield ceiling


def breaker_family(fields: dict[str, str]) -> GaugeMetricFamily:
    """One series per scope and state, every scope the breaker knows (and any other it holds): an alert
    rule per scope needs its series even while that scope is closed."""
    family = GaugeMetricFamily(f"{_P}_breaker_state", "1 for each circuit breaker scope's current state",
                               labels=["api", "state"])
    held = {name.rsplit(".", 1)[0] for name in fields if name.endswith(".state")}
    for scope in sorted(set(breaker.SCOPES) | held):
        state = fields.get(f"{scope}.state") or "closed"
        for name in BREAKER_STATES:
            family.add_metric([scope, name], 1 if state == name else 0)
    return family


def process_family(role: str) -> GaugeMetricFamily:
    """`stockout_sync_process_up{role}`: this exporter's process is a worker or beat. Its absence is what
    the "no worker" and "no beat" rules see (a process that is not running serves nothing)."""
    family = GaugeMetricFamily(f"{_P}_process_up", "1: a worker or beat process serves these metrics",
                               labels=["role"])
    family.add_metric([role], 1)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{_P}_{name}", documentation, value=float(value))



def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")



def _stage(value: Any) -> str:
    try:
        record = json.loads(value) if value else None
    except ValueError:
        record = None
    return stored_stage(record)
