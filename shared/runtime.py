"""The long-lived objects of one process: Redis, state, both clients, the mapping; built lazily once per
process, the mapping re-read when it changes (docs/design.md, "The per-process runtime")."""
from __future__ import annotations

import os
import threading
import time
from functools import cached_property
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared import metrics
from shared.bip.client import BipClient
from shared.breaker import Breaker
from shared.mapping import Mapping, load_mapping
from shared.redis_conn import connect
from shared.settings import Settings, get_settings
from shared.state import StateStore
from shared.wdt.client import WdtClient


class MappingCache:
    """The current mapping, re-parsed only when the file's mtime changes (checked at most once a second)."""

    def __init__(self, path: Path, check_every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._mapping: Mapping | None = None
        self._mtime: float | None = None
        self._checked = 0.0

    def get(self) -> Mapping:
        now = time.monotonic()
        with self._lock:
            if self._mapping is None or now - self._checked >= self.check_every_s:
                self._checked = now
                mtime = self.path.stat().st_mtime if self.path.exists() else None
                if self._mapping is None or mtime != self._mtime:
                    self._mapping = load_mapping(self.path)
                    self._mtime = mtime
            return self._mapping


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mappings = MappingCache(settings.mapping_file)

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

    @property
    def mapping(self) -> Mapping:
        return self.mappings.get()


def redis_client(settings: Settings) -> redis.Redis:
    """Our own Redis connection. It rides out a Redis restart of a few seconds by retrying (the
    commands we send are idempotent: SET, GET, scripts that compare before they write) rather than
    failing the stockout's attempt; the budget stays well under the task's soft time limit."""
    return connect(
        settings.redis_url,
        settings.redis_ca_certs,
        **settings.sentinel_options(),
        socket_connect_timeout=settings.http_connect_timeout_s,
        socket_timeout=30,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=REDIS_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


REDIS_RETRIES = 12  # about 8 s of waiting at most
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
