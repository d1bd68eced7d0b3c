"""Running totals kept in Redis for `stockout-sync status`: one GET to read.

Why not count the done marks: there are millions of them and counting means a SCAN of the whole
keyspace. The worker's `StateStore.finish` increments the counter in the same script that writes
the done mark, so a save is counted exactly when it is marked done; a stockout saved again after a
reconcile cleared its mark is counted twice.
"""
from __future__ import annotations

import redis


def saved_key(prefix: str) -> str:
    return f"{prefix}:stats:saved"


def saved(client: redis.Redis, prefix: str) -> int:
    value = client.get(saved_key(prefix))
    return int(value) if value else 0


def last_saved_key(prefix: str) -> str:
    """Epoch seconds of the last save a worker marked done (written by the same finish script)."""
    return f"{prefix}:stats:last_saved_at"
