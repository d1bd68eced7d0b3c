"""Measures of the pipeline's progress, for `wait_until(..., progress=...)`: a test waits as long as
the work keeps moving and fails only when it stalls (see docs/design.md, "Waiting in tests")."""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import redis

from shared.redis.keys import Keys


def pipeline(sandbox: Any, client: redis.Redis | None = None, prefix: str = "t") -> Callable[[], Hashable]:
    """BIP's side of the sandbox (saves, save calls, token calls, faults, the retries they cause) and,
    with `client`, the stockout and dead-letter queues and the dead letters: a change in any means the
    workers are still at it. WDT calls and the producer queue are left out on purpose: beat polls every
    few seconds whether or not the work moves, which would hide a stall."""

    def measure() -> Hashable:
        counters = sandbox.counters()
        calls = sum(v for k, v in counters.items() if k.startswith("bip_") and isinstance(v, int))
        calls += sum(n for kind, n in counters["faults"].items() if kind.startswith("bip"))
        if client is None:
            return calls
        keys = Keys(prefix)
        queues = tuple(client.llen(keys.queue(q)) for q in ("stockouts", "dead_letter"))
        return calls, queues, client.zcard(keys.dlq_index)

    return measure


def polls(client: redis.Redis, prefix: str = "t") -> Callable[[], int]:
    """How many polls have ended since it was made: beat's polls, counted as each one writes its
    summary (a test that must show nothing happens across polls waits for some, never sleeps)."""
    key, seen = Keys(prefix).poll_last, [client.get(Keys(prefix).poll_last)]

    def count() -> int:
        value = client.get(key)
        if value != seen[-1]:
            seen.append(value)
        return len(seen) - 1

    return count
