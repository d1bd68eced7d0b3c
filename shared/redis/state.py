"""Redis state by stockout_id: what is queued, what is done (marks in small hash buckets), who is
working on what, and the cursor. Key layout and why: docs/design.md, "Redis state: marks, locks, cursor"."""
from __future__ import annotations

import hashlib
import json
import time
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from shared.core.personal import redact
from shared.core.timeutil import format_wire, parse_wire
from shared.redis.keys import Keys
from shared.redis.lock import OwnedLock

BUCKET = 100
_HASHED_BUCKETS = 1 << 16
_MAX_NUMERIC_LEN = 18  # fits a signed 64-bit integer, so the bucket number stays exact

# The worker's first step in one round trip: the done mark, else the lock. Reading the mark and
# taking the lock in one script is what makes a second look at the mark after locking unnecessary.
# The lock is also taken when the same task already holds it: a message redelivered after its
# worker process died carries the same task id, and must not wait for the dead one.
# The queued mark comes back too: `q|g` names the key generation a reconcile re-created it under.
# With an epoch id, the marks are read only while the epoch is still that one: a mark missing
# because Redis lost everything is never taken for "not saved yet" (pttl -1 says so).
# KEYS: lock, mark bucket, epoch. ARGV: owner, lock ms, mark field, epoch id or ''.
# Returns {done mark or false, pttl, mark or false}.
_CLAIM = """
if ARGV[4] ~= '' then
  local e = redis.call('GET', KEYS[3])
  if (not e) or (not string.find(e, ARGV[4], 1, true)) then return {false, -1, false} end
end
local mark = redis.call('HGET', KEYS[2], ARGV[3])
if mark and string.sub(mark, 1, 2) == 'd|' then return {mark, 0, mark} end
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {false, 0, mark}
end
return {false, redis.call('PTTL', KEYS[1]), mark}
"""

# The worker's last step in one round trip: the done mark (and its bucket's TTL), the synced
# counter `status` reads (only when the stockout was not done already) and the time of the last
# save (the metrics' "last save"), then the lock goes.
# The stockout's in-flight marker goes too: it is done.
# KEYS: lock, mark bucket, counter, last-saved time, in-flight hash. ARGV: owner, mark field, mark, ttl s,
# now (epoch s), stockout id.
_FINISH = """
redis.call('HDEL', KEYS[5], ARGV[6])
local before = redis.call('HGET', KEYS[2], ARGV[2])
if not (before and string.sub(before, 1, 2) == 'd|') then redis.call('INCR', KEYS[3]) end
redis.call('SET', KEYS[4], ARGV[5])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# Reconcile re-opens a stockout proven deleted in BIP: its done mark becomes `q|<generation>` only
# while it is still the mark the reconcile read, so a worker's newer save is never undone.
# KEYS: mark bucket. ARGV: field, expected mark, new mark, ttl s.
_SWAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# Before a save: the in-flight marker `<ms>|<generation>` (Redis TIME) of the first send of this key,
# written when there is none (or one of another generation; with ARGV[3] = '1' always).
# KEYS: in-flight hash. ARGV: stockout id, generation, reset. Returns {marker before or false, now ms}.
_SENDING = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = redis.call('HGET', KEYS[1], ARGV[1])
local same = before and string.match(before, '|(%d+)$') == ARGV[2]
if ARGV[3] == '1' or not same then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now) .. '|' .. ARGV[2])
end
if same then return {before, string.format('%.0f', now)} end
return {false, string.format('%.0f', now)}
"""



@dataclass(frozen=True)
class Done:
    bip_id: str
    bip_code: str
    generation: int = 0  # of the resubmitCheckKey the record was saved with (worker.transform.resubmit_key)

    def mark(self) -> str:
        return done_mark(self.bip_id, self.bip_code, self.generation)


@dataclass(frozen=True)
class Claim:
    """What `claim` found: the stockout done already, or the lock taken (wait 0), or the seconds
    until another task's lock expires."""

    done: Done | None
    wait_s: float
    generation: int = 0  # the key generation the queued mark names (`q|g`), 0 for plain `q`
    lost: bool = False  # the state is not the epoch's any more: nothing read here can be trusted

    @property
    def acquired(self) -> bool:
        return self.done is None and self.wait_s == 0 and not self.lost


def stockout_key(raw: dict) -> str:
    """The de-duplication key of a raw WDT stockout: its stockout_id, or, for a record that has
    none (it will be dead-lettered), a stable hash of its content so it is dead-lettered once."""
    sid = raw.get("stockout_id") if isinstance(raw, dict) else None
    if isinstance(sid, (str, int)) and str(sid).strip():
        return str(sid).strip()
    # without the receiver's fields: the publisher drops them, and the worker must find the same key
    blob = json.dumps(redact(raw), sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return "noid-" + hashlib.sha1(blob).hexdigest()[:16]


def order_no_of(raw: Any) -> str:
    """The stockout's order number as text ("" when it has none or is no stockout at all)."""
    return str(raw.get("order_no", "")) if isinstance(raw, dict) else ""


class StateStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.r = client
        self.p = prefix
        self.k = Keys(prefix)
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._swap = client.register_script(_SWAP)
        self._sending = client.register_script(_SENDING)

    # -- per stockout ----------------------------------------------------------------------
    def mark_slot(self, sid: str) -> tuple[str, str]:
        """(bucket key, field) of a stockout's mark."""
        if sid.isascii() and sid.isdigit() and len(sid) <= _MAX_NUMERIC_LEN and (sid[0] != "0" or sid == "0"):
            n = int(sid)
            return self.k.mark_bucket(n // BUCKET), str(n % BUCKET)
        # Not a canonical number ("noid-…", leading zeros): spread by hash, the field keeps the
        # whole id so two ids never share one.
        return self.k.mark_hashed_bucket(zlib.crc32(sid.encode('utf-8', 'surrogatepass')) % _HASHED_BUCKETS), sid

    def states(self, ids: list[str]) -> dict[str, str | None]:
        """One round trip for a whole page: each id's raw state (`q`, `d|…` or None)."""
        if not ids:
            return {}
        by_bucket: dict[str, list[tuple[str, str]]] = {}
        for i in ids:
            bucket, field = self.mark_slot(i)
            by_bucket.setdefault(bucket, []).append((i, field))
        pipe = self.r.pipeline(transaction=False)
        for bucket, members in by_bucket.items():
            pipe.hmget(bucket, [field for _, field in members])
        found: dict[str, str | None] = {}
        for members, values in zip(by_bucket.values(), pipe.execute(), strict=False):
            for (i, _), v in zip(members, values, strict=False):
                found[i] = v.decode() if v is not None else None
        return {i: found[i] for i in ids}

    def mark_queued(self, ids: list[str]) -> None:
        """After publishing: HSETNX so a `done` that a fast worker already wrote is never overwritten."""
        if not ids:
            return
        # MULTI: a bucket is never left without its TTL by a connection lost half-way.
        pipe = self.r.pipeline(transaction=True)
        buckets = set()
        for i in ids:
            bucket, field = self.mark_slot(i)
            pipe.hsetnx(bucket, field, "q")
            buckets.add(bucket)
        for bucket in buckets:
            pipe.expire(bucket, self.ttl_s)
        pipe.execute()

    def done(self, sid: str) -> Done | None:
        bucket, field = self.mark_slot(sid)
        value = self.r.hget(bucket, field)
        return parse_done(value.decode() if isinstance(value, bytes) else value)

    def mark_done(self, sid: str, bip_id: str, bip_code: str, generation: int = 0) -> None:
        bucket, field = self.mark_slot(sid)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(bucket, field, done_mark(bip_id, bip_code, generation))
        pipe.expire(bucket, self.ttl_s)
        pipe.execute()

    def swap_mark(self, sid: str, expected: str, new: str) -> bool:
        """Replace the mark only while it still reads `expected` (compare-and-set)."""
        bucket, field = self.mark_slot(sid)
        return bool(self._swap(keys=[bucket], args=[field, expected, new, self.ttl_s]))

    def forget(self, sid: str) -> None:
        """Drop a `queued` mark whose message never left (publishing failed)."""
        bucket, field = self.mark_slot(sid)
        self.r.hdel(bucket, field)

    # -- per-stockout work lock --------------------------------------------------------------
    def _lock(self, sid: str) -> str:
        return self.k.lock(sid)

    def claim(self, sid: str, owner: str, ttl_s: float, epoch: str = "") -> Claim:
        """`done(sid)`, and when it is not done the lock for `owner` (or the seconds until the
        holder's lock expires), atomically and in one round trip. With `epoch`, only while the state
        is still that epoch's (else `Claim.lost`)."""
        bucket, field = self.mark_slot(sid)
        done, pttl, *rest = self._claim(keys=[self._lock(sid), bucket, self.k.epoch],
                                        args=[owner, int(ttl_s * 1000), field, epoch])
        if int(pttl) == -1:
            return Claim(None, 0.0, lost=True)
        if done:
            return Claim(parse_done(done.decode() if isinstance(done, bytes) else done), 0.0)
        mark = rest[0] if rest else None
        generation = mark_generation(mark.decode() if isinstance(mark, bytes) else mark)
        pttl = int(pttl)
        return Claim(None, 0.0 if pttl == 0 else max(pttl, 1) / 1000, generation)

    def release(self, sid: str, owner: str) -> None:
        OwnedLock(self.r, self._lock(sid)).release(owner)

    def finish(self, sid: str, owner: str, bip_id: str, bip_code: str, generation: int = 0) -> None:
        """`mark_done`, count it as synced, then `release`: atomically and in one round trip."""
        bucket, field = self.mark_slot(sid)
        mark = done_mark(bip_id, bip_code, generation)
        self._finish(keys=[self._lock(sid), bucket, self.k.saved, self.k.last_saved_at, self.k.inflight],
                     args=[owner, field, mark, self.ttl_s, f"{time.time():.3f}", sid])

    # -- in-flight saves: when this stockout's key was first sent ------------------------------
    def sending(self, sid: str, generation: int = 0, *, reset: bool = False) -> tuple[float | None, float]:
        """Mark a save of `sid` as about to be sent: (seconds since the first send of this key, or
        None when it was never sent before; now on Redis's clock, epoch s). `reset`: the key counts as
        sent afresh (BIP's absence was just proven, so whatever it remembered no longer matters)."""
        before, now = self._sending(keys=[self.k.inflight], args=[sid, str(generation), "1" if reset else "0"])
        now_ms = float(now)
        if not before:
            return None, now_ms / 1000
        first = (before.decode() if isinstance(before, bytes) else before).split("|", 1)[0]
        return max(0.0, (now_ms - float(first)) / 1000), now_ms / 1000

    # -- the producer's lock, cursor and summary --------------------------------------------
    # `task`: the live poll (`poll_lock`) or the backfill jobs' task (`backfill_lock`): each runs one at
    # a time, and neither ever waits for the other's lock.
    def _producer_lock(self, task: str) -> OwnedLock:
        return OwnedLock(self.r, self.k.backfill_lock if task == "backfill" else self.k.poll_lock)

    def acquire_poll_lock(self, token: str, ttl_s: float, task: str = "poll") -> bool:
        return self._producer_lock(task).acquire(token, ttl_s)

    def renew_poll_lock(self, token: str, ttl_s: float, task: str = "poll") -> bool:
        # only while still ours, so a poll that overran its lock cannot steal it back
        return self._producer_lock(task).renew(token, ttl_s)

    def release_poll_lock(self, token: str, task: str = "poll") -> None:
        self._producer_lock(task).release(token)

    def cursor(self) -> datetime | None:
        value = self.r.get(self.k.cursor)
        return parse_wire(value.decode() if isinstance(value, bytes) else value) if value else None

    def advance_cursor(self, to: datetime) -> None:
        """Only forwards: a backfill or a slow poll never moves the cursor back."""
        current = self.cursor()
        if current is None or to > current:
            self.r.set(self.k.cursor, format_wire(to))

    def save_poll_summary(self, summary: dict) -> None:
        self.r.set(self.k.poll_last, json.dumps(summary, ensure_ascii=False))

    def last_poll_summary(self) -> dict | None:
        value = self.r.get(self.k.poll_last)
        return json.loads(value) if value else None


def done_mark(bip_id: str, bip_code: str, generation: int = 0) -> str:
    # The generation rides on the id (`~g`): BIP ids are digits, while a code may hold any character.
    return f"d|{bip_id}~{generation}|{bip_code}" if generation else f"d|{bip_id}|{bip_code}"


def queued_mark(generation: int = 0) -> str:
    return f"q|{generation}" if generation else "q"


def parse_done(value: str | None) -> Done | None:
    if not value or not value.startswith("d|"):
        return None
    _, bip_id, bip_code = ([*value.split("|", 2), "", ""])[:3]
    bip_id, _, generation = bip_id.partition("~")
    return Done(bip_id, bip_code, int(generation) if generation.isdigit() else 0)


def mark_generation(value: str | None) -> int:
    """The key generation a mark names (0 for plain `q`, `d|id|code` and no mark)."""
    done = parse_done(value)
    if done is not None:
        return done.generation
    if value and value.startswith("q|") and value[2:].isdigit():
        return int(value[2:])
    return 0
