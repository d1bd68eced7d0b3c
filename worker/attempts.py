"""Real attempts per stockout, counted in Redis (`Keys.attempts`).

Why not Celery's `request.retries`: it counts every retry, and waits for a rate limit or a paused
breaker are retries that must never use an attempt. Why Redis rather than a message header or a
kwarg: the count belongs to the stockout, so duplicate messages and a redelivery after a crash share
it, and the message contract (what the producer publishes, what Flower shows) stays as it is.
"""
from __future__ import annotations

import redis as redis_lib

from shared.redis.keys import Keys

TTL_S = 7 * 86400  # longer than any run of retries; a stockout that stops failing leaves no key


def key(prefix: str, stockout_id: str) -> str:
    return Keys(prefix).attempts(stockout_id)


def failed_so_far(r: redis_lib.Redis, prefix: str, stockout_id: str) -> int:
    return int(r.get(key(prefix, stockout_id)) or 0)


def record_failure(r: redis_lib.Redis, prefix: str, stockout_id: str) -> int:
    pipe = r.pipeline(transaction=False)
    pipe.incr(key(prefix, stockout_id))
    pipe.expire(key(prefix, stockout_id), TTL_S)
    count, _ = pipe.execute()
    return int(count)


def forget(r: redis_lib.Redis, prefix: str, stockout_id: str) -> None:
    r.delete(key(prefix, stockout_id))
