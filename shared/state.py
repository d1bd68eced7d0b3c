"""Redis state by stockout_id: what is queued, what is done, who is working on what, and the cursor.

Key layout (every key starts with REDIS_PREFIX, default `sos`; the broker's own keys share it):

| key                      | value                         | lives                     |
|--------------------------|-------------------------------|---------------------------|
| `{p}:so:{stockout_id}`   | `q` (queued) or `d|id|code`   | STATE_TTL_DAYS            |
| `{p}:lock:{stockout_id}` | task id of the worker on it   | task time limit + margin  |
| `{p}:cursor`             | Beijing time the next poll reads from (minus lookback) | forever |
| `{p}:poll:lock`          | token of the running poll     | renewed per page          |
| `{p}:poll:last`          | JSON summary of the last poll | forever                   |

`done` is the first de-duplication layer (BIP's resubmitCheckKey and the document code are the
others). `queued` only saves publishing a message twice; the worker never trusts it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

import redis

from shared.timeutil import format_wire, parse_wire

# Take the lock when it is free, or when the same task already holds it: a message redelivered
# after its worker process died carries the same task id, and must not wait for the dead one.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
return redis.call('PTTL', KEYS[1])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Renew only while still ours, so a poll that overran its lock cannot steal it back.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class Done:
    bip_id: str
    bip_code: str


def stockout_key(raw: dict) -> str:
    """The de-duplication key of a raw WDT stockout: its stockout_id, or, for a record that has
    none (it will be dead-lettered), a stable hash of its content so it is dead-lettered once."""
    sid = raw.get("stockout_id") if isinstance(raw, dict) else None
    if isinstance(sid, (str, int)) and str(sid).strip():
        return str(sid).strip()
    blob = json.dumps(raw, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return "noid-" + hashlib.sha1(blob).hexdigest()[:16]


class StateStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.r = client
        self.p = prefix
        self.ttl_s = ttl_s
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    # -- per stockout ----------------------------------------------------------------------
    def _so(self, sid: str) -> str:
        return f"{self.p}:so:{sid}"

    def states(self, ids: list[str]) -> dict[str, str | None]:
        """One round trip for a whole page: each id's raw state (`q`, `d|…` or None)."""
        if not ids:
            return {}
        values = self.r.mget([self._so(i) for i in ids])
        return {i: (v.decode() if v is not None else None) for i, v in zip(ids, values)}

    def mark_queued(self, ids: list[str]) -> None:
        """After publishing: NX so a `done` that a fast worker already wrote is never overwritten."""
        if not ids:
            return
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.set(self._so(i), "q", ex=self.ttl_s, nx=True)
        pipe.execute()

    def done(self, sid: str) -> Done | None:
        value = self.r.get(self._so(sid))
        return parse_done(value.decode() if value is not None else None)

    def mark_done(self, sid: str, bip_id: str, bip_code: str) -> None:
        self.r.set(self._so(sid), f"d|{bip_id}|{bip_code}", ex=self.ttl_s)

    def forget(self, sid: str) -> None:
        """Drop a `queued` mark whose message never left (publishing failed)."""
        self.r.delete(self._so(sid))

    # -- per-stockout work lock --------------------------------------------------------------
    def acquire(self, sid: str, owner: str, ttl_s: float) -> float:
        """0 when `owner` now holds the lock, else the seconds until the holder's lock expires."""
        pttl = int(self._acquire(keys=[f"{self.p}:lock:{sid}"], args=[owner, int(ttl_s * 1000)]))
        return 0.0 if pttl == 0 else max(pttl, 1) / 1000

    def release(self, sid: str, owner: str) -> None:
        self._release(keys=[f"{self.p}:lock:{sid}"], args=[owner])

    # -- the producer's lock, cursor and summary --------------------------------------------
    def acquire_poll_lock(self, token: str, ttl_s: float) -> bool:
        return bool(self.r.set(f"{self.p}:poll:lock", token, nx=True, px=int(ttl_s * 1000)))

    def renew_poll_lock(self, token: str, ttl_s: float) -> bool:
        return bool(self._renew(keys=[f"{self.p}:poll:lock"], args=[token, int(ttl_s * 1000)]))

    def release_poll_lock(self, token: str) -> None:
        self._release(keys=[f"{self.p}:poll:lock"], args=[token])

    def cursor(self) -> datetime | None:
        value = self.r.get(f"{self.p}:cursor")
        return parse_wire(value.decode()) if value else None

    def advance_cursor(self, to: datetime) -> None:
        """Only forwards: a backfill or a slow poll never moves the cursor back."""
        current = self.cursor()
        if current is None or to > current:
            self.r.set(f"{self.p}:cursor", format_wire(to))

    def save_poll_summary(self, summary: dict) -> None:
        self.r.set(f"{self.p}:poll:last", json.dumps(summary, ensure_ascii=False))

    def last_poll_summary(self) -> dict | None:
        value = self.r.get(f"{self.p}:poll:last")
        return json.loads(value) if value else None


def parse_done(value: str | None) -> Done | None:
    if not value or not value.startswith("d|"):
        return None
    _, bip_id, bip_code = (value.split("|", 2) + ["", ""])[:3]
    return Done(bip_id, bip_code)
