"""One owned lock in Redis: taken with SET NX PX under a token, renewed and released only by its holder,
each in one step (a holder that overran its time can neither extend nor free another's lock)."""
from __future__ import annotations

import redis

# KEYS[1] the lock; ARGV[1] the holder's token. Compare and delete.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# ARGV[2] ms. Extend while ours; with ARGV[3] = '1', take it as well when free (a loop that keeps it).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if ARGV[3] == '1' then return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0 end
return 0
"""


class OwnedLock:
    def __init__(self, r: redis.Redis, key: str) -> None:
        self.r, self.key = r, key
        self._release = r.register_script(_RELEASE)
        self._renew = r.register_script(_RENEW)

    def acquire(self, token: str, ttl_s: float) -> bool:
        return bool(self.r.set(self.key, token, nx=True, px=_ms(ttl_s)))

    def renew(self, token: str, ttl_s: float, *, or_take: bool = False) -> bool:
        """Extend the lock while `token` holds it; `or_take`: also take it when nobody does."""
        return bool(self._renew(keys=[self.key], args=[token, _ms(ttl_s), "1" if or_take else "0"]))

    def release(self, token: str) -> bool:
        return bool(self._release(keys=[self.key], args=[token]))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
