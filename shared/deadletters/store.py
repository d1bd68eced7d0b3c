"""Dead letters in Redis: the store (record with its history, index, queue copy) and the operator's
moves on it, requeue and purge, each claimed atomically. Layout and why: docs/design.md, "Dead letters"."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, Literal

import orjson
import redis

from shared.core.personal import redact
from shared.core.settings import get_settings
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.model import DeadLetter, merge, requeued, summary
from shared.redis.keys import DEAD_LETTER_QUEUE, Keys

LEASE_S = 60  # longer than publishing one message can take
BATCH = 200  # letters claimed, published and unparked per round trip


# KEYS: record, index, queue, parked, lease, entries, orders, parked set, history.
# ARGV: stockout id, "requeue"|"purge", lease s. Touches this letter's entries only: the queue copy
# goes by its exact value, searched from the tail where the oldest letters are (LPUSH adds at the
# head), so claiming letters oldest first (the index's order) finds each at the end of the list.
_CLAIM = """
local rec = redis.call('GET', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local entry = redis.call('HGET', KEYS[6], ARGV[1])
if entry then
  redis.call('LREM', KEYS[3], -1, entry)
  redis.call('HDEL', KEYS[6], ARGV[1])
end
if not rec then return false end
redis.call('DEL', KEYS[1])
local ok, letter = pcall(cjson.decode, rec)
if ok and type(letter['order_no']) == 'string' and redis.call('HGET', KEYS[7], letter['order_no']) == ARGV[1] then
  redis.call('HDEL', KEYS[7], letter['order_no'])
end
if ARGV[2] == 'requeue' then
  redis.call('SET', KEYS[4], rec)
  redis.call('SET', KEYS[5], '1', 'EX', ARGV[3])
  redis.call('SADD', KEYS[8], ARGV[1])
else
  redis.call('DEL', KEYS[9])
end
return rec
"""

# KEYS: queue, entries. ARGV: stockout id, the queue entry. One copy per letter: a stockout
# dead-lettered again replaces its copy.
_PUSH = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then redis.call('LREM', KEYS[1], -1, old) end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

_LEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"""

# KEYS: record, history. ARGV: the history (JSON), ttl s. A record written meanwhile (the stockout
# failed again before its requeue finished) already holds the whole story: no history beside it.
_KEEP_HISTORY = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2]) end
"""


# KEYS: a letter's key in the layout before `rec:`, its key now. A letter an older version wrote moves
# once; the old key must hold a letter (a string): an id such as `index` named one of the store's own keys.
_UPGRADE = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
return 0
"""
LAYOUT = "2"
_upgraded: set[str] = set()  # prefixes this process has seen in the current layout


class DeadLetterStore:
    """Redis layout: the `dlq_*` keys of `shared/redis/keys.py` (table and meaning: docs/redis-keys.md).

    Requeue and purge claim a letter in one script (two operators at once never send one twice)
    touching only that letter's keys. A requeue parks the record with a lease and drops it only
    after the new message left; one killed half-way loses nothing: once the lease has run out, the
    next requeue takes the parked letter over. A requeued letter that fails again continues its
    history: attempts add up, first_failed_at stays, every failure and requeue is listed.
    """

    def __init__(self, client: redis.Redis, prefix: str, *, ttl_s: int | None = None,
                 keep_personal_data: bool | None = None) -> None:
        if ttl_s is None or keep_personal_data is None:
            settings = get_settings()
            ttl_s = settings.dlq_ttl_days * 86400 if ttl_s is None else ttl_s
            keep_personal_data = settings.dlq_keep_personal_data if keep_personal_data is None else keep_personal_data
        self.r = client
        self.p = prefix
        self.k = Keys(prefix)
        self.ttl_s = ttl_s
        self.keep_personal_data = keep_personal_data
        self._claim = client.register_script(_CLAIM)
        self._push = client.register_script(_PUSH)
        self._lease = client.register_script(_LEASE)
        self._keep_history = client.register_script(_KEEP_HISTORY)
        self._upgrade = client.register_script(_UPGRADE)
        if prefix not in _upgraded:
            self.upgrade_layout()

    def _key(self, sid: str) -> str:
        return self.k.dlq_record(sid)

    def _parked_key(self, sid: str) -> str:
        return self.k.dlq_requeuing(sid)

    def _lease_key(self, sid: str) -> str:
        return self.k.dlq_lease(sid)

    def _history_key(self, sid: str) -> str:
        return self.k.dlq_history(sid)

    @property
    def index_key(self) -> str:
        return self.k.dlq_index

    @property
    def queue_key(self) -> str:
        return self.k.queue(DEAD_LETTER_QUEUE)

    @property
    def entries_key(self) -> str:
        return self.k.dlq_entries

    @property
    def orders_key(self) -> str:
        return self.k.dlq_orders

    @property
    def parked_set_key(self) -> str:
        return self.k.dlq_parked

    def upgrade_layout(self) -> int:
        """Move the letters an older version stored under `Keys.dlq_legacy_record` to `Keys.dlq_record` (once per
        Redis; docs/redis-keys.md, "Upgrading"). Returns how many moved."""
        try:
            if _text(self.r.get(self.k.dlq_layout) or b"") == LAYOUT:
                _upgraded.add(self.p)
                return 0
            moved = 0
            for chunk in _chunks((_text(v) for v, _ in self.r.zscan_iter(self.k.dlq_index, count=BATCH)), BATCH):
                pipe = self.r.pipeline(transaction=False)
                for sid in chunk:
                    self._upgrade(keys=[self.k.dlq_legacy_record(sid), self.k.dlq_record(sid)], client=pipe)
                moved += sum(int(n) for n in pipe.execute())
            self.r.set(self.k.dlq_layout, LAYOUT)
        except redis.RedisError:
            return 0  # tried again by the next store this process makes
        _upgraded.add(self.p)
        return moved

    def clean(self, raw: Any) -> Any:
        """The stockout as a letter may keep it (DLQ_KEEP_PERSONAL_DATA)."""
        return raw if self.keep_personal_data else redact(raw)

    # -- writing -------------------------------------------------------------------------------
    def put(self, letter: DeadLetter) -> DeadLetter:
        """Store or update a letter. A stockout that failed before (still a letter, or requeued
        since) keeps its first failure time and history, and its attempts add up."""
        letter = letter.model_copy(update={"stockout": self.clean(letter.stockout)})
        sid = letter.stockout_id
        key, history_key, parked_key = self._key(sid), self._history_key(sid), self._parked_key(sid)
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    # a concurrent put, claim or unpark of this letter: merge again
                    pipe.watch(key, history_key, parked_key)
                    merged = merge(self._story_so_far(pipe, key, parked_key, history_key), letter)
                    pipe.multi()
                    pipe.set(key, merged.model_dump_json(), ex=self.ttl_s + 86400)
                    pipe.delete(history_key)
                    pipe.zadd(self.index_key, {sid: time.time()})
                    if merged.order_no:
                        pipe.hset(self.orders_key, merged.order_no, sid)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.expire()
        return merged

    @staticmethod
    def _story_so_far(pipe: Any, key: str, parked_key: str, history_key: str) -> DeadLetter | None:
        """What a new failure continues: the letter itself; else, while a requeue of it is in flight
        (published, not yet unparked: a fast worker or the publisher's own size check fails it that
        soon), its parked copy and that requeue; else the history a finished requeue left."""
        if current := pipe.get(key):
            return DeadLetter.model_validate_json(current)
        if parked := pipe.get(parked_key):
            return requeued(DeadLetter.model_validate_json(parked), format_wire(now_beijing()))
        history = pipe.get(history_key)
        return DeadLetter.model_validate_json(history) if history else None

    def push_copy(self, sid: str, entry: bytes) -> None:
        """The letter's copy on the dead_letter queue, remembered byte for byte so a claim removes it by value."""
        self._push(keys=[self.queue_key, self.entries_key], args=[sid, entry])

    def expire(self, limit: int = 1000) -> int:
        """Drop letters whose last failure is older than the TTL (oldest first, at most `limit`)."""
        cutoff = time.time() - self.ttl_s
        old = [_text(v) for v in self.r.zrangebyscore(self.index_key, "-inf", cutoff, start=0, num=limit)]
        return len(self._claim_many(old, "purge"))

    # -- reading -------------------------------------------------------------------------------
    def get(self, sid: str) -> DeadLetter | None:
        value = self.r.get(self._key(sid))
        return DeadLetter.model_validate_json(value) if value else None

    def history(self, sid: str) -> DeadLetter | None:
        """A letter requeued and not failed since: its last record (without the stockout) and history."""
        value = self.r.get(self._history_key(sid))
        return DeadLetter.model_validate_json(value) if value else None

    def find_order(self, order_no: str) -> str | None:
        """The stockout id of the letter with this order number."""
        value = self.r.hget(self.orders_key, order_no)
        return _text(value) if value else None

    def scored_ids(self) -> list[tuple[str, float]]:
        """Every id with its last failure (epoch s), oldest first: a letter written again scores anew."""
        pairs: list[Any] = self.r.zrange(self.index_key, 0, -1, withscores=True)
        return [(_text(v), float(score)) for v, score in pairs]

    def scored_since(self, epoch_s: float) -> list[tuple[str, float]]:
        """The letters whose last failure is at or after `epoch_s`, with it, oldest first."""
        pairs: list[Any] = self.r.zrangebyscore(self.index_key, epoch_s, "+inf", withscores=True)
        return [(_text(v), float(score)) for v, score in pairs]

    def ids(self) -> list[str]:
        return [_text(v) for v in self.r.zrange(self.index_key, 0, -1)]

    def count(self) -> int:
        return int(self.r.zcard(self.index_key))

    def iter_all(self, ids: Iterable[str] | None = None) -> Iterator[DeadLetter]:
        """Every letter, oldest first, read a batch at a time (thousands of letters are megabytes)."""
        it = iter(self.ids() if ids is None else ids)
        while chunk := list(islice(it, BATCH)):
            for value in self.r.mget([self._key(i) for i in chunk]):
                if value:
                    yield DeadLetter.model_validate_json(value)

    def all(self) -> list[DeadLetter]:
        return list(self.iter_all())

    def summaries(self, ids: Iterable[str] | None = None) -> Iterator[DeadLetter]:
        """`iter_all` without what lists and filters never read: no history, no queue entry, and of the
        stockout only its warehouse_no (a letter is kilobytes, its summary a few hundred bytes)."""
        it = iter(self.ids() if ids is None else ids)
        while chunk := list(islice(it, BATCH)):
            for value in self.r.mget([self._key(i) for i in chunk]):
                if value:
                    yield summary(orjson.loads(value))

    def select(self, ids: Iterable[str] = (), **match: str | None) -> list[str]:
        """The letters an operator names: by stockout id or order number, else those matching the
        filter (DeadLetter.matches; none given = every letter), oldest first."""
        names = list(ids)
        if names:
            return [self.find_order(i) or i for i in names]
        if any(match.values()):
            return [x.stockout_id for x in self.summaries() if x.matches(**match)]
        return self.ids()  # oldest first: each letter's queue copy is then at the end of the list

    def sort_out(self, ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Of these, the letters there are to requeue, and the malformed messages (nothing in them to
        requeue: `dlq show`, then purge); a name without a letter is in neither."""
        letters = list(self.summaries(ids))
        return ([x.stockout_id for x in letters if not x.malformed], [x.stockout_id for x in letters if x.malformed])

    def parked(self) -> list[DeadLetter]:
        """Letters whose requeue was interrupted after the claim and before the new message left."""
        sids = [_text(v) for v in self.r.smembers(self.parked_set_key)]
        values = self.r.mget([self._parked_key(s) for s in sids]) if sids else []
        gone = [s for s, v in zip(sids, values, strict=True) if not v]
        if gone:
            self.r.srem(self.parked_set_key, *gone)
        return [DeadLetter.model_validate_json(v) for v in values if v]

    def queue_length(self) -> int:
        return int(self.r.llen(self.queue_key))

    # -- requeue and purge ---------------------------------------------------------------------
    def _claim_args(self, sid: str, action: str) -> dict:
        keys = [self._key(sid), self.index_key, self.queue_key, self._parked_key(sid), self._lease_key(sid),
                self.entries_key, self.orders_key, self.parked_set_key, self._history_key(sid)]
        return {"keys": keys, "args": [sid, action, LEASE_S]}

    def claim(self, sid: str, action: Literal["requeue", "purge"]) -> DeadLetter | None:
        rec = self._claim(**self._claim_args(sid, action))
        return DeadLetter.model_validate_json(rec) if rec else None

    def _claim_many(self, sids: list[str], action: Literal["requeue", "purge"]) -> list[DeadLetter]:
        """`claim` for a batch in one round trip (each script still its own atomic step)."""
        if not sids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for sid in sids:
            self._claim(**self._claim_args(sid, action), client=pipe)
        return [DeadLetter.model_validate_json(rec) for rec in pipe.execute() if rec]

    def _take_over(self, sid: str) -> bool:
        """The lease on a parked letter: only one requeue may finish it, only once the one that
        parked it has had its time, and never after it was finished (checked in the same step)."""
        return bool(self._lease(keys=[self._parked_key(sid), self._lease_key(sid)], args=[LEASE_S]))

    def _unpark(self, letters: list[DeadLetter]) -> None:
        """After the new messages left: the letters' history stays (without the stockout) for the
        next failure to continue, and the parked copies go."""
        if not letters:
            return
        at = format_wire(now_beijing())
        pipe = self.r.pipeline(transaction=True)
        for letter in letters:
            kept = requeued(letter, at).model_copy(update={"stockout": {}})
            self._keep_history(keys=[self._key(letter.stockout_id), self._history_key(letter.stockout_id)],
                               args=[kept.model_dump_json(), self.ttl_s], client=pipe)
            pipe.delete(self._parked_key(letter.stockout_id), self._lease_key(letter.stockout_id))
        pipe.srem(self.parked_set_key, *[letter.stockout_id for letter in letters])
        pipe.execute()

    def requeue(self, ids: Iterable[str], publish: Callable[[dict, str], Any],
                on_sent: Callable[[list[DeadLetter]], Any] | None = None) -> list[str]:
        """Send each letter's stockout back to `stockouts`; it goes through the current mapping.
        A batch at a time: claimed, published (in one LPUSH when `publish` has `.many`), unparked, then
        `on_sent` (Flower's mark: shared/queue/events.py)."""
        done: list[str] = []

        def send(letters: list[DeadLetter]) -> None:
            many = getattr(publish, "many", None)
            if many is not None:
                many([(letter.stockout, letter.stockout_id) for letter in letters])
            else:
                for letter in letters:
                    publish(letter.stockout, letter.stockout_id)
            self._unpark(letters)
            done.extend(letter.stockout_id for letter in letters)
            if on_sent is not None and letters:
                on_sent(letters)

        # finish what an interrupted requeue started
        send([letter for letter in self.parked() if self._take_over(letter.stockout_id)])
        it = iter(ids)
        while chunk := list(islice(it, BATCH)):
            send(self._claim_many(chunk, "requeue"))  # a letter gone meanwhile (requeued or purged) is skipped
        return done

    def purge(self, ids: Iterable[str]) -> list[str]:
        done: list[str] = []
        it = iter(ids)
        while chunk := list(islice(it, BATCH)):
            done.extend(letter.stockout_id for letter in self._claim_many(chunk, "purge"))
        return done


def _chunks(values: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(values)
    while chunk := list(islice(it, size)):
        yield chunk


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
