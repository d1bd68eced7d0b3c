"""Measures of the pipeline's progress, for `wait_until(..., progress=...)`: a test waits as long as
the work keeps moving and fails only when it stalls (see docs/design.md, "Waiting in tests")."""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import redis


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
        queues = tuple(client.llen(f"{prefix}:{q}") for q in ("stockouts", "dead_letter"))
        return calls, queues, client.zcard(f"{prefix}:dlq:index")

    return measure
