"""Dead letters: a failed stockout kept whole with the reason in words, and the moves an operator makes.

A dead letter is two things (after Kafka Connect's dead-letter queue and its error headers):
1. a copy of the message on the `dead_letter` queue, which no worker consumes, so its length shows
   in Flower (`/api/queues/length`) and in `redis-cli LLEN {prefix}:dead_letter`;
2. a record `{prefix}:dlq:{stockout_id}` (JSON) with the error context, indexed by last failure
   time in the sorted set `{prefix}:dlq:index`.

The record is the source of truth. Requeue and purge claim it in one Lua script (so two operators
running requeue at once never send one letter twice) and remove its copy from the queue in the same
script; a requeue first parks the record under `{prefix}:dlq:requeuing:{id}`, with a lease
`{prefix}:dlq:lease:{id}`, and deletes it only after the new message left. A requeue killed
half-way loses nothing: once its lease has run out, the next requeue takes the parked letter over.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, Field

from shared.celery_app import DEAD_LETTER_QUEUE
from shared.timeutil import now_beijing

Stage = Literal["fetch", "transform", "save", "internal"]
LEASE_S = 60  # longer than publishing one message can take


class DeadLetter(BaseModel):
    stockout_id: str
    order_no: str = ""
    stage: Stage
    error_class: str
    message: str
    api: str = ""
    code: str = ""
    api_message: str = ""
    http_status: int | None = None
    attempts: int = 1
    first_failed_at: str
    last_failed_at: str
    task_id: str = ""
    message_id: str = ""
    worker_host: str = ""
    mapping_fingerprint: str = ""
    stockout: dict[str, Any] = Field(default_factory=dict)

    @property
    def reason(self) -> str:
        code = f" [{self.api} {self.code}]" if self.code else ""
        return f"{self.stage}: {self.error_class}{code}: {self.message}"

    def matches(self, *, reason: str | None = None, code: str | None = None) -> bool:
        """The operator's filter: `reason` is a case-blind part of the reason, `code` the remote code exactly."""
        if reason and reason.lower() not in self.reason.lower():
            return False
        return not (code and code != self.code)


# KEYS: record, index, queue list, parking key, lease key. ARGV: stockout id, "requeue"|"purge", lease s.
# Removes every copy of the letter from the queue (matched on the task id in the message headers).
_CLAIM = """
local rec = redis.call('GET', KEYS[1])
if not rec then return false end
local letter = cjson.decode(rec)
local items = redis.call('LRANGE', KEYS[3], 0, -1)
for _, item in ipairs(items) do
  local ok, msg = pcall(cjson.decode, item)
  if ok and msg['headers'] and msg['headers']['id'] == letter['message_id'] then
    redis.call('LREM', KEYS[3], 0, item)
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == 'requeue' then
  redis.call('SET', KEYS[4], rec)
  redis.call('SET', KEYS[5], '1', 'EX', ARGV[3])
end
return rec
"""

_LEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"""


class DeadLetterStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.p = prefix
        self._claim = client.register_script(_CLAIM)
        self._lease = client.register_script(_LEASE)

    def _key(self, sid: str) -> str:
        return f"{self.p}:dlq:{sid}"

    def _parked_key(self, sid: str) -> str:
        return f"{self.p}:dlq:requeuing:{sid}"

    def _lease_key(self, sid: str) -> str:
        return f"{self.p}:dlq:lease:{sid}"

    @property
    def index_key(self) -> str:
        return f"{self.p}:dlq:index"

    @property
    def queue_key(self) -> str:
        return f"{self.p}:{DEAD_LETTER_QUEUE}"

    def put(self, letter: DeadLetter) -> DeadLetter:
        """Store or update a letter; a stockout that fails again keeps its first failure time."""
        previous = self.get(letter.stockout_id)
        if previous is not None:
            letter = letter.model_copy(update={"first_failed_at": previous.first_failed_at})
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self._key(letter.stockout_id), letter.model_dump_json())
        pipe.zadd(self.index_key, {letter.stockout_id: now_beijing().timestamp()})
        pipe.execute()
        return letter

    def get(self, sid: str) -> DeadLetter | None:
        value = self.r.get(self._key(sid))
        return DeadLetter.model_validate_json(value) if value else None

    def ids(self) -> list[str]:
        members = cast(list[bytes], self.r.zrange(self.index_key, 0, -1))  # no withscores, no decode_responses
        return [v.decode() for v in members]

    def all(self) -> list[DeadLetter]:
        ids = self.ids()
        if not ids:
            return []
        values = self.r.mget([self._key(i) for i in ids])
        return [DeadLetter.model_validate_json(v) for v in values if v]

    def parked(self) -> list[DeadLetter]:
        """Letters whose requeue was interrupted after the claim and before the new message left."""
        keys = list(self.r.scan_iter(match=f"{self.p}:dlq:requeuing:*", count=500))
        values = self.r.mget(keys) if keys else []
        return [DeadLetter.model_validate_json(v) for v in values if v]

    def _take_over(self, sid: str) -> bool:
        """The lease on a parked letter: only one requeue may finish it, only once the one that
        parked it has had its time, and never after it was finished (checked in the same step)."""
        return bool(self._lease(keys=[self._parked_key(sid), self._lease_key(sid)], args=[LEASE_S]))

    def _unpark(self, sid: str) -> None:
        self.r.delete(self._parked_key(sid), self._lease_key(sid))

    def queue_length(self) -> int:
        return int(self.r.llen(self.queue_key))

    def claim(self, sid: str, action: Literal["requeue", "purge"]) -> DeadLetter | None:
        rec = self._claim(
            keys=[self._key(sid), self.index_key, self.queue_key, self._parked_key(sid), self._lease_key(sid)],
            args=[sid, action, LEASE_S],
        )
        return DeadLetter.model_validate_json(rec) if rec else None

    def requeue(self, ids: Iterable[str], publish: Callable[[dict, str], Any]) -> list[str]:
        """Send each letter's original stockout back to `stockouts`; it goes through the current mapping."""
        done: list[str] = []
        for letter in self.parked():  # finish what an interrupted requeue started
            if self._take_over(letter.stockout_id):
                publish(letter.stockout, letter.stockout_id)
                self._unpark(letter.stockout_id)
                done.append(letter.stockout_id)
        for sid in ids:
            claimed = self.claim(sid, "requeue")
            if claimed is None:
                continue  # gone: requeued or purged by someone else meanwhile
            publish(claimed.stockout, claimed.stockout_id)
            self._unpark(sid)
            done.append(sid)
        return done

    def purge(self, ids: Iterable[str]) -> list[str]:
        return [sid for sid in ids if self.claim(sid, "purge") is not None]
