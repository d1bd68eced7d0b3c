"""A rate limiter shared by every worker process on every machine (GCRA in one Redis Lua script that
books each caller its own future slot). Why: docs/design.md, "Rate limiting (GCRA)"."""
from __future__ import annotations

import time

import redis as redis_lib

from shared.errors import RateLimitError

# KEYS[1] = the limiter's key; ARGV[1] = emission interval T (µs), ARGV[2] = burst,
# ARGV[3] = the longest wait (µs) the caller accepts, -1 = any.
# Returns {granted (0/1), wait_us}. Numbers are kept as "%.0f" strings: Lua 5.1's tostring uses
# 14 significant digits, which would round a µs timestamp (16 digits).
_GCRA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - interval * burst - now
if wait < 0 then wait = 0 end
if max_wait >= 0 and wait > max_wait then
  return {0, wait}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, wait}
"""


class RateLimiter:
    """`rate_per_s` calls a second for everyone using the same `name`, with bursts of `burst`."""

    def __init__(
        self,
        redis: redis_lib.Redis,
        name: str,
        rate_per_s: float,
        burst: int = 1,
        *,
        prefix: str = "sos",
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.redis = redis
        self.name = name
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self.key = f"{prefix}:rl:{name}"
        self._interval_us = 1_000_000.0 / self.rate_per_s
        self._script = redis.register_script(_GCRA)

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, {self.rate_per_s}/s, burst={self.burst})"

    def _call(self, max_wait_s: float | None) -> tuple[bool, float]:
        max_wait_us = -1 if max_wait_s is None else int(max_wait_s * 1_000_000)
        granted, wait_us = self._script(
            keys=[self.key], args=[f"{self._interval_us:.0f}", self.burst, max_wait_us]
        )
        return bool(granted), int(wait_us) / 1_000_000

    def try_acquire(self) -> float:
        """0.0 when a slot was granted now; otherwise the seconds until one would be (nothing booked)."""
        granted, wait = self._call(0)
        return 0.0 if granted and wait == 0 else wait

    def acquire(self, timeout_s: float | None = None) -> float:
        """Block until a slot is granted; return the seconds waited.

        Raises RateLimitError (with retry_after) when the slot would come later than `timeout_s`,
        without booking it, so the caller can give the work back to the queue instead.
        """
        granted, wait = self._call(timeout_s)
        if not granted:
            raise RateLimitError(
                f"rate limiter {self.name!r}: next slot in {wait:.3f}s, over the {timeout_s}s allowed",
                retry_after=wait,
            )
        if wait > 0:
            time.sleep(wait)
        return wait

    def reset(self) -> None:
        self.redis.delete(self.key)

