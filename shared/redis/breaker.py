"""The circuit breaker shared through Redis: a configuration error (authentication, grants,
discovery, an unreadable mapping) pauses the work that needs it instead of failing every stockout.

State, one hash (`Keys.breaker`) (a contract: the alerts read it): `state` closed|open|half_open,
`cause` (words, no secrets), `api`, `since` (ISO time, UTC) — of the scope that opened first —
and per scope (`bip`, `wdt`, `mapping`) `{api}.state`, `.cause`, `.since`, `.next_probe` (ms).
While a scope is open one probe per interval is let through (half_open); its success closes it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import redis as redis_lib

from shared.redis.keys import Keys

log = logging.getLogger("stockout_sync.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
SCOPES = ("bip", "wdt", "mapping")
# Open while workers cannot write dead letters: shown and alerted like the others, but it pauses no
# save (a worker's blocking scopes are bip and mapping); a letter written closes it.
DEAD_LETTER_SCOPE = "deadletters"
DEFAULT_PROBE_INTERVAL_S = 30.0

# KEYS[1] = the hash; ARGV: op (trip|close|probe|hurry), scope, cause, since, interval (ms).
# Returns 1 when the op changed something that deserves a log line (opened, closed, probe granted).
_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h, op, api = KEYS[1], ARGV[1], ARGV[2]
local st = redis.call('HGET', h, api .. '.state')
local is_open = (st == 'open' or st == 'half_open')
local result = 0
if op == 'trip' then
  if not is_open then
    redis.call('HSET', h, api .. '.since', ARGV[4])
    result = 1
  end
  redis.call('HSET', h, api .. '.state', 'open', api .. '.cause', ARGV[3],
             api .. '.next_probe', string.format('%.0f', now + tonumber(ARGV[5])))
elseif op == 'close' then
  if is_open then result = 1 end
  redis.call('HDEL', h, api .. '.state', api .. '.cause', api .. '.since', api .. '.next_probe')
elseif op == 'probe' then
  if is_open and now >= tonumber(redis.call('HGET', h, api .. '.next_probe') or '0') then
    redis.call('HSET', h, api .. '.state', 'half_open', api .. '.next_probe',
               string.format('%.0f', now + tonumber(ARGV[5])))
    result = 1
  end
elseif op == 'hurry' then
  if is_open then redis.call('HSET', h, api .. '.next_probe', '0') end
end
-- the summary fields: the scope that opened first, or closed
local best, best_since, best_state = nil, nil, nil
local all = redis.call('HGETALL', h)
for i = 1, #all, 2 do
  local scope = string.match(all[i], '^(.+)%.state$')
  if scope and (all[i + 1] == 'open' or all[i + 1] == 'half_open') then
    local since = redis.call('HGET', h, scope .. '.since') or ''
    if best == nil or since < best_since then best, best_since, best_state = scope, since, all[i + 1] end
  end
end
if best then
  redis.call('HSET', h, 'state', best_state, 'cause', redis.call('HGET', h, best .. '.cause') or '',
             'api', best, 'since', best_since)
else
  redis.call('HSET', h, 'state', 'closed')
  redis.call('HDEL', h, 'cause', 'api', 'since')
end
return result
"""


class BreakerObserver(Protocol):
    """Told when a scope opens or closes; `shared.core.metrics` provides one (this module imports no
    metrics, so `status` can read the breaker without loading them)."""

    def breaker(self, api: str, is_open: bool, *, tripped: bool = False) -> None: ...


@dataclass(frozen=True)
class Opened:
    api: str
    state: str  # open or half_open
    cause: str
    since: str  # ISO time, UTC


def _run(redis: redis_lib.Redis, prefix: str, op: str, api: str, cause: str = "", interval_s: float = 0.0) -> bool:
    since = datetime.now(UTC).isoformat(timespec="seconds")
    script = redis.register_script(_SCRIPT)
    return bool(script(keys=[Keys(prefix).breaker], args=[op, api, cause, since, f"{interval_s * 1000:.0f}"]))


def trip(redis: redis_lib.Redis, prefix: str, cause: str, api: str,
         *, probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S, observer: BreakerObserver | None = None) -> bool:
    """Open (or keep open) the breaker of `api` because of `cause` (human words, no secrets); the
    next probe is let through after `probe_interval_s`. True when it was closed before."""
    opened = _run(redis, prefix, "trip", api, cause[:500], probe_interval_s)
    if observer is not None:
        observer.breaker(api, True, tripped=opened)
    if opened:
        log.error("circuit breaker OPEN for %s: %s — work that needs it is paused (nothing is dead-lettered); "
                  "a probe every %.0f s, or fix it and restart", api, cause, probe_interval_s,
                  extra={"stage": "breaker", "outcome": "open", "api": api})
    return opened


def close(redis: redis_lib.Redis, prefix: str, api: str, *, observer: BreakerObserver | None = None) -> bool:
    """Close the breaker of `api` (a call that needs it succeeded). True when it was open."""
    closed = _run(redis, prefix, "close", api)
    if observer is not None:
        observer.breaker(api, False)
    if closed:
        log.warning("circuit breaker CLOSED for %s: a probe succeeded, work resumes", api,
                    extra={"stage": "breaker", "outcome": "closed", "api": api})
    return closed


def try_probe(redis: redis_lib.Redis, prefix: str, api: str,
              *, probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S) -> bool:
    """True for the one caller per interval allowed to try a call while `api` is open (half-open)."""
    return _run(redis, prefix, "probe", api, "", probe_interval_s)


def probe_now(redis: redis_lib.Redis, prefix: str, api: str) -> None:
    """Let the next caller probe at once (a restarted process: its configuration may be fixed)."""
    _run(redis, prefix, "hurry", api)


def opened(redis: redis_lib.Redis, prefix: str, apis: Iterable[str] | None = None) -> list[Opened]:
    """The open scopes (all, or those among `apis`), the earliest first."""
    raw = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
           for k, v in redis.hgetall(Keys(prefix).breaker).items()}
    return open_scopes(raw, apis)


def open_scopes(raw: dict[str, str], apis: Iterable[str] | None = None) -> list[Opened]:
    """The open scopes of the breaker's hash as read (all, or those among `apis`), the earliest first."""
    wanted = set(apis) if apis is not None else None
    found = []
    for field, value in raw.items():
        if not field.endswith(".state") or value not in (OPEN, HALF_OPEN):
            continue
        api = field[: -len(".state")]
        if wanted is None or api in wanted:
            found.append(Opened(api, value, raw.get(f"{api}.cause", ""), raw.get(f"{api}.since", "")))
    return sorted(found, key=lambda o: o.since)


def is_open(redis: redis_lib.Redis, prefix: str, api: str | None = None) -> bool:
    return bool(opened(redis, prefix, None if api is None else [api]))


class Breaker:
    """One process's view of the scopes it needs: the closed state is trusted for `cache_s` so the
    hot path costs at most one Redis read a second; an open one is always read afresh."""

    def __init__(self, redis: redis_lib.Redis, prefix: str, apis: Iterable[str], *,
                 probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S, cache_s: float = 1.0,
                 observer: BreakerObserver | None = None) -> None:
        self.redis, self.prefix, self.apis, self.observer = redis, prefix, tuple(apis), observer
        self.probe_interval_s, self.cache_s = probe_interval_s, cache_s
        self._closed_until = 0.0
        self._fresh = True  # a new process probes at once: it may be running a fixed configuration

    def blocking(self) -> Opened | None:
        """The open scope this process must not work around, or None (closed, or we are the probe)."""
        if time.monotonic() < self._closed_until:
            return None
        found = opened(self.redis, self.prefix, self.apis)
        if not found:
            self._closed_until = time.monotonic() + self.cache_s
            return None
        if self._fresh:
            self._fresh = False
            for scope in found:
                probe_now(self.redis, self.prefix, scope.api)
        for scope in found:
            if not try_probe(self.redis, self.prefix, scope.api, probe_interval_s=self.probe_interval_s):
                return scope
        return None  # this call is the probe of every open scope

    def trip(self, cause: str, api: str) -> bool:
        self._closed_until = 0.0
        return trip(self.redis, self.prefix, cause, api, probe_interval_s=self.probe_interval_s, observer=self.observer)

    def succeeded(self, apis: Iterable[str]) -> None:
        """A call that needed `apis` went through: close what is open of them (a read when nothing is)."""
        if time.monotonic() < self._closed_until:
            return
        for scope in opened(self.redis, self.prefix, apis):
            close(self.redis, self.prefix, scope.api, observer=self.observer)
