"""Running totals kept in Redis for `stockout-sync status`: one GET to read, incremented with the done
mark (docs/design.md, "Running totals")."""
from __future__ import annotations

import redis


def saved_key(prefix: str) -> str:
    return f"{prefix}:stats:saved"


def saved(client: redis.Redis, prefix: str) -> int:
    value = client.get(saved_key(prefix))
    return int(value) if value else 0
