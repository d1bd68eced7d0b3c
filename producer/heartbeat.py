"""Beat's heartbeat: every poll beat schedules writes when it ran, so `status` and `backfill` tell a
live beat from none (`shared.observe.snapshot.Snapshot.beat_alive` judges it)."""
from __future__ import annotations

import time

import redis

from shared.redis.keys import Keys


def key(prefix: str) -> str:
    return Keys(prefix).beat_heartbeat


def beat(r: redis.Redis, prefix: str) -> None:
    r.set(key(prefix), repr(time.time()))

