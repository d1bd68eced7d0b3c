"""Running totals kept in Redis for `stockout-sync status`: one INCR per event, one GET to read.

Why not count the done marks: there are millions of them and counting means a SCAN of the whole
keyspace. The total is approximate by design: a worker that dies between marking a stockout done
and counting it leaves it uncounted, and a stockout saved again after a reconcile cleared its mark
is counted twice.
"""
from __future__ import annotations

import redis


def saved_key(prefix: str) -> str:
    return f"{prefix}:stats:saved"


def count_saved(client: redis.Redis, prefix: str) -> None:
    try:
        client.incr(saved_key(prefix))
    except redis.RedisError:
        pass  # a missed count must never fail the save it counts


def saved(client: redis.Redis, prefix: str) -> int:
    value = client.get(saved_key(prefix))
    return int(value) if value else 0
