"""Running totals kept in Redis for `stockout-sync status`: one GET to read, incremented with the done
mark (docs/design.md, "Running totals")."""
from __future__ import annotations

import redis

from shared.redis.keys import Keys


def saved(client: redis.Redis, prefix: str) -> int:
    value = client.get(Keys(prefix).saved)
    return int(value) if value else 0

