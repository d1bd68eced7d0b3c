"""Beat's heartbeat: every poll beat schedules writes when it ran, so `status` and `backfill` tell a
live beat (heartbeat younger than two poll intervals) from none."""
from __future__ import annotations

import time

import redis

from shared.keys import Keys
from shared.snapshot import HEARTBEAT_ALIVE_INTERVALS

ALIVE_INTERVALS = HEARTBEAT_ALIVE_INTERVALS  # a beat that missed two polls in a row is not scheduling any


def key(prefix: str) -> str:
    return Keys(prefix).beat_heartbeat


def beat(r: redis.Redis, prefix: str) -> None:
    r.set(key(prefix), repr(time.time()))


def age_s(r: redis.Redis, prefix: str) -> float | None:
    """Seconds since beat's last poll ran; None when none ever ran here."""
    value = r.get(key(prefix))
    try:
        return max(0.0, time.time() - float(value)) if value else None
    except ValueError:
        return None


def alive(age: float | None, poll_interval_s: float) -> bool:
    return age is not None and age <= ALIVE_INTERVALS * poll_interval_s
