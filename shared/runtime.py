"""The long-lived objects of one process: Redis, state, both clients, the mapping; built lazily once per
process, the mapping re-read when it changes (docs/design.md, "The per-process runtime")."""
from __future__ import annotations

import logging
import os
import threading
from functools import cached_property
from pathlib import Path

import redis

from shared.bip.client import BipClient
from shared.core import metrics
from shared.core.settings import Settings, get_settings
from shared.mapping.cache import MappingProblem, mapping_cache
from shared.mapping.model import Mapping
from shared.observe.clock import ClockWatch
from shared.redis.breaker import Breaker
from shared.redis.conn import redis_client
from shared.redis.epoch import StateGuard
from shared.redis.keys import Keys
from shared.redis.state import StateStore
from shared.wdt.client import WdtClient

log = logging.getLogger("stockout_sync.mapping")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mappings = mapping_cache(settings.mapping_file)
        self._reported: MappingProblem | None = None

    @cached_property
    def redis(self) -> redis.Redis:
        return redis_client(self.settings)

    @cached_property
    def store(self) -> StateStore:
        return StateStore(self.redis, self.settings.redis_prefix, self.settings.state_ttl_days * 86400)

    @cached_property
    def wdt(self) -> WdtClient:
        return WdtClient.from_settings(self.settings, self.redis)

    @cached_property
    def bip(self) -> BipClient:
        return BipClient.from_settings(self.settings, self.redis)

    @cached_property
    def breaker(self) -> Breaker:
        """The scopes the worker's saves need: BIP and the mapping file."""
        s = self.settings
        return Breaker(self.redis, s.redis_prefix, ("bip", "mapping"), probe_interval_s=s.breaker_probe_interval_s,
                       observer=metrics.BREAKER_OBSERVER)

    @cached_property
    def clock(self) -> ClockWatch:
        """This (worker) process's clock against Redis TIME, measured every few seconds."""
        return ClockWatch(self.redis, self.settings.redis_prefix, "worker")

    @cached_property
    def state_guard(self) -> StateGuard:
        """The worker's check that the Redis state is the one it started with (shared/redis/epoch.py)."""
        s = self.settings
        return StateGuard(self.redis, s.redis_prefix, probe_interval_s=s.breaker_probe_interval_s,
                          observer=metrics.BREAKER_OBSERVER)

    @property
    def mapping(self) -> Mapping:
        return self.current_mapping()

    def current_mapping(self, *, fresh: bool = False) -> Mapping:
        mapping = self.mappings.get(fresh=fresh)
        if self.mappings.problem != self._reported:
            self._reported = self.mappings.problem
            report_mapping_problem(self.redis, self.settings.redis_prefix, self._reported, self.mappings.path)
        return mapping


def report_mapping_problem(r: redis.Redis, prefix: str, problem: MappingProblem | None, path: Path) -> None:
    """Tell `status`, the metrics and the log, once per change of the file (not once per task and
    not once per pool process: the process that records a change in Redis first logs it)."""
    key, seen = Keys(prefix).mapping_invalid, Keys(prefix).mapping_seen
    metrics.MAPPING_INVALID.set(1 if problem else 0)
    try:
        if problem is None:
            if r.delete(key):  # only the first process to see the fix says so
                r.delete(seen)
                log.warning("mapping file %s is valid again: using it", path)
            return
        # one atomic swap per change of the file decides which process tells
        before = r.set(seen, problem.file_changed_at, get=True)
        if isinstance(before, bytes) and before.decode() == problem.file_changed_at:
            return
        previous = r.get(key)
        if previous:  # invalid since the first of several broken versions
            problem = problem.model_copy(update={"since": MappingProblem.model_validate_json(previous).since})
        r.set(key, problem.model_dump_json())
    except redis.RedisError as err:  # the stockout in hand matters more than the report
        log.warning("could not record the mapping file's state in Redis: %s", type(err).__name__)
        return
    metrics.MAPPING_RELOAD_FAILURES.inc()
    log.error("%s", problem.line())


_runtime: Runtime | None = None
_pid: int | None = None
_guard = threading.Lock()


def runtime() -> Runtime:
    """This process's Runtime; a forked child builds its own instead of sharing the parent's sockets."""
    global _runtime, _pid
    with _guard:
        if _runtime is None or _pid != os.getpid():
            _runtime = Runtime(get_settings())
            _pid = os.getpid()
        return _runtime
