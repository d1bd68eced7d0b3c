"""A rate limiter shared by every worker process on every machine: GCRA in Redis Lua scripts, with
an adaptive (AIMD) rate whose ceiling is the configured one. Reasoning: docs/ratelimit.md.

The whole state lives in Redis (the GCRA "theoretical arrival time" and a small hash for the
adaptive rate), scripts read Redis's own clock, and a process only ever sleeps a *duration* the
script gave it, so the limit holds across processes and machines whose clocks disagree.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis as redis_lib

from shared.core.errors import RateLimitError
from shared.redis.keys import Keys

# Adaptive rate, as a pure function of the hash written at the last refusal (r0, t0, limit):
# fast recovery (doubling every DOUBLING_S) up to KNEE × limit, then a slow linear probe of
# SLOW × limit per second, never above the ceiling. No refusal yet: the ceiling.
_CURRENT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function current(hash, now, ceiling, knee_f, slow_f, doubling_s)
  local h = redis.call('HMGET', hash, 'r0', 't0', 'limit', 'epoch')
  local epoch = tonumber(h[4]) or 0
  local r0 = tonumber(h[1])
  if not r0 then return ceiling, epoch, 0 end
  local t0, limit = tonumber(h[2]), tonumber(h[3])
  local dt = (now - t0) / 1000000
  if dt < 0 then dt = 0 end
  local knee = knee_f * limit
  local r
  if r0 < knee then
    local tau = doubling_s * math.log(knee / r0) / math.log(2)
    if dt < tau then r = r0 * 2 ^ (dt / doubling_s) else r = knee + slow_f * limit * (dt - tau) end
  else
    r = r0 + slow_f * limit * dt
  end
  if r > ceiling then r = ceiling end
  return r, epoch, limit
end
"""

# KEYS[1] = GCRA key, KEYS[2] = adaptive hash; ARGV: ceiling/s, burst, longest wait (µs, -1 any),
# knee, slow, doubling_s. Returns {granted, wait_us, epoch, "rate"}. Why the slot is booked even
# when it lies in the future: booking makes the waiters a queue (each sleeps until its own slot),
# where "try again later" would make them race and some starve. Numbers are kept as "%.0f"
# strings: Lua 5.1's tostring uses 14 significant digits, which would round a µs timestamp.
_GCRA = _CURRENT + """
local now = now_us()
local rate, epoch = current(KEYS[2], now, tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
local interval = 1000000 / rate
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - interval * burst - now
if wait < 0 then wait = 0 end
if max_wait >= 0 and wait > max_wait then
  return {0, string.format('%.0f', wait), epoch, string.format('%.6f', rate), ''}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
-- the grants of the last seconds, by slot time (member: the unique new TAT), for the refusal's estimate
local member = string.format('%.0f', new_tat)
redis.call('ZADD', KEYS[3], now + wait, member)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 5000000)
redis.call('PEXPIRE', KEYS[3], math.ceil((new_tat - now) / 1000) + 6000)
return {1, string.format('%.0f', wait), epoch, string.format('%.6f', rate), member}
"""

# A refusal by the server. KEYS as above; ARGV: ceiling, knee, slow, doubling_s, the epoch and
# grant of the refused call, beta, min rate, hash TTL (ms). Only a call granted at the current
# rate lowers it: calls granted before the last decrease were answered by that decrease already
# (else one burst of refusals would divide the rate once per refused call). What the server
# allows is estimated from the calls of ours it accepted in the last seconds; the new rate is just
# under that (or `beta` × the rate when there is no estimate), so one refusal is usually enough.
# The bookings made at the old rate are void: the GCRA state restarts one new interval from now
# and waiting callers book again. Returns {lowered 0/1, "rate", epoch}.
_REFUSED = _CURRENT + """
local now = now_us()
redis.call('ZREM', KEYS[3], ARGV[6])
local rate, epoch = current(KEYS[2], now, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
if tonumber(ARGV[5]) ~= epoch then return {0, string.format('%.6f', rate), epoch} end
-- What the server accepted lately, in calls a second: the count of the last second, or the spacing
-- of the calls of the last five seconds, whichever is lower (a count quantises slow rates: one
-- call a second may show as 0 or 2 in a window; a spacing overstates a burst). Unknown: nil.
local recent = redis.call('ZRANGEBYSCORE', KEYS[3], now - 5000000, now, 'WITHSCORES')
local k = #recent / 2
local one = redis.call('ZCOUNT', KEYS[3], now - 1000000, now)
local accepted = nil
if one > 0 then accepted = one end
if k >= 2 then
  local span = (tonumber(recent[#recent]) - tonumber(recent[2])) / 1000000
  if span > 0 then
    local spacing = (k - 1) / span
    if accepted == nil or spacing < accepted then accepted = spacing end
  end
elseif k == 1 and accepted == nil then
  local ago = (now - tonumber(recent[2])) / 1000000
  if ago < 1 then ago = 1 end
  accepted = 1 / ago
end
local limit, lowered = rate, rate * tonumber(ARGV[7])
if accepted ~= nil then
  -- the server took more than our rate lately (what it remembers of an earlier, faster rate):
  -- this refusal says nothing about the rate now
  if tonumber(ARGV[2]) * accepted >= rate then return {0, string.format('%.6f', rate), epoch} end
  limit, lowered = accepted, tonumber(ARGV[2]) * accepted
end
if lowered < tonumber(ARGV[8]) then lowered = tonumber(ARGV[8]) end
redis.call('HSET', KEYS[2], 'r0', string.format('%.6f', lowered), 't0', string.format('%.0f', now),
           'limit', string.format('%.6f', limit), 'epoch', epoch + 1, 'refused_at', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[9]))
local interval = 1000000 / lowered
redis.call('SET', KEYS[1], string.format('%.0f', now + interval), 'PX', math.ceil(interval / 1000) + 1)
return {1, string.format('%.6f', lowered), epoch + 1}
"""

# Read-only: {"rate", epoch, "limit", µs since the last refusal or -1, "booked_us"}.
_STATE = _CURRENT + """
local now = now_us()
local rate, epoch, limit = current(KEYS[2], now, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
                                  tonumber(ARGV[4]))
local at = tonumber(redis.call('HGET', KEYS[2], 'refused_at') or '')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local booked = tat - now
if booked < 0 then booked = 0 end
return {string.format('%.6f', rate), epoch, string.format('%.6f', limit),
        at and string.format('%.0f', now - at) or '-1', string.format('%.0f', booked)}
"""


class LimiterObserver(Protocol):
    """What the limiter reports as it works; `shared.core.metrics` provides one (the limiter imports no metrics)."""

    def waited(self, name: str, seconds: float) -> None: ...

    def refusal(self, name: str, *, lowered: bool) -> None: ...


@dataclass(frozen=True)
class Adaptive:
    """How the shared rate adapts (AIMD). Defaults chosen with `make bench` (bench/adaptive.py)."""

    beta: float = 0.5  # multiplicative decrease on a refusal
    knee: float = 0.9  # after a refusal: this fraction of what the server accepted, or fast recovery to it…
    doubling_s: float = 1.0  # …doubling this often
    slow: float = 0.002  # then probe upwards by this fraction of that rate per second
    min_fraction: float = 0.002  # never below this fraction of the ceiling
    ttl_s: int = 7 * 86400  # what was learnt is kept this long after the last refusal


@dataclass(frozen=True)
class LimiterState:
    rate_per_s: float  # the shared rate now
    ceiling_per_s: float  # the configured rate
    epoch: int  # refusals that lowered the rate so far
    refused_rate_per_s: float  # the rate at the last refusal (0: none)
    since_refusal_s: float | None  # seconds since the last refusal that lowered it
    booked_ahead_s: float  # slots already promised to waiting callers


RECHECK_AFTER_S = 0.02  # a caller that slept at least this long checks the rate was not lowered meanwhile


class RateLimiter:
    """At most `rate_per_s` calls a second (the ceiling) for everyone using the same `name`, with
    bursts of `burst`; lower while the server refuses (`refused()`), probing back up slowly."""

    def __init__(
        self,
        redis: redis_lib.Redis,
        name: str,
        rate_per_s: float,
        burst: int = 1,
        *,
        prefix: str = "sos",
        adaptive: Adaptive | None = None,
        observer: LimiterObserver | None = None,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.redis = redis
        self.name = name
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        keys = Keys(prefix)
        self.key = keys.rate_limit(name)
        self.adaptive_key = keys.rate_limit_adaptive(name)
        self.grants_key = keys.rate_limit_grants(name)
        self.adaptive = adaptive or Adaptive()
        self.observer = observer
        self._gcra = redis.register_script(_GCRA)
        self._refused = redis.register_script(_REFUSED)
        self._state = redis.register_script(_STATE)
        self._local = threading.local()  # the epoch of this thread's last grant

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, ceiling {self.rate_per_s}/s, burst={self.burst})"

    def _shape(self) -> list[str]:
        a = self.adaptive
        return [f"{a.knee}", f"{a.slow}", f"{a.doubling_s}"]

    def _keys(self) -> list[str]:
        return [self.key, self.adaptive_key, self.grants_key]

    def _call(self, max_wait_s: float | None) -> tuple[bool, float, int, str]:
        max_wait_us = -1 if max_wait_s is None else int(max_wait_s * 1_000_000)
        a = self.adaptive
        granted, wait_us, epoch, _rate, member = self._gcra(
            keys=self._keys(),
            args=[f"{self.rate_per_s}", self.burst, max_wait_us, f"{a.knee}", f"{a.slow}", f"{a.doubling_s}"],
        )
        grant = member.decode() if isinstance(member, bytes) else str(member)
        return bool(granted), int(wait_us) / 1_000_000, int(epoch), grant

    def try_acquire(self) -> float:
        """0.0 when a slot was granted now; otherwise the seconds until one would be (nothing booked)."""
        granted, wait, epoch, member = self._call(0)
        if granted and wait == 0:
            self._local.grant = (epoch, member)
            return 0.0
        return wait

    def acquire(self, timeout_s: float | None = None) -> float:
        """Block until a slot is granted; return the seconds waited.

        Raises RateLimitError (with retry_after) when the slot would come later than `timeout_s`,
        without booking it, so the caller can give the work back to the queue instead.
        """
        waited = 0.0
        while True:
            granted, wait, epoch, member = self._call(timeout_s)
            if not granted:
                raise RateLimitError(
                    f"rate limiter {self.name!r}: next slot in {wait:.3f}s, over the {timeout_s}s allowed",
                    retry_after=wait,
                )
            if wait > 0:
                time.sleep(wait)
                waited += wait
            # A refusal while we slept lowered the rate and voided the slots booked at the old one:
            # going now would be refused too, so book again at the new rate.
            if wait >= RECHECK_AFTER_S and int(self.redis.hget(self.adaptive_key, "epoch") or 0) != epoch:
                continue
            self._local.grant = (epoch, member)
            if self.observer is not None:
                self.observer.waited(self.name, waited)
            return waited

    def refused(self) -> float:
        """The server refused this thread's last granted call as too frequent: lower the shared rate
        (once per refusal at the current rate). Returns the seconds until the next slot."""
        a = self.adaptive
        epoch, member = getattr(self._local, "grant", (0, ""))
        lowered, rate, _epoch = self._refused(
            keys=self._keys(),
            args=[f"{self.rate_per_s}", *self._shape(), epoch, member, f"{a.beta}",
                  f"{self.rate_per_s * a.min_fraction}", a.ttl_s * 1000],
        )
        if self.observer is not None:
            self.observer.refusal(self.name, lowered=bool(lowered))
        return 1.0 / float(rate)

    def state(self) -> LimiterState:
        rate, epoch, limit, since_us, booked_us = self._state(
            keys=self._keys(), args=[f"{self.rate_per_s}", *self._shape()]
        )
        since = int(since_us)
        return LimiterState(
            rate_per_s=float(rate), ceiling_per_s=self.rate_per_s, epoch=int(epoch), refused_rate_per_s=float(limit),
            since_refusal_s=None if since < 0 else since / 1e6, booked_ahead_s=int(booked_us) / 1e6,
        )

    def reset(self) -> None:
        """Forget the bookings and what was learnt: back to the ceiling."""
        self.redis.delete(*self._keys())
