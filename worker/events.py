"""What the sync task reports about each attempt: one log line with the event's fields, and metrics,
built in one place (docs/design.md, "What an attempt reports")."""
from __future__ import annotations

import logging
import time

from shared.core import metrics
from shared.redis.state import order_no_of, stockout_key

log = logging.getLogger("stockout_sync.worker")


def task_event(
    level: int,
    message: str,
    *,
    stockout: dict,
    task_id: str,
    attempt: int,
    started: float,
    outcome: str,
    stage: str,
    error: BaseException | None = None,
    **fields: object,
) -> None:
    duration_s = round(time.monotonic() - started, 4)
    error_name = type(error).__name__ if error is not None else ""
    metrics.observe_task(outcome, duration_s, stage=stage, error=error_name)
    extra = {
        "stockout_id": stockout_key(stockout),
        "order_no": order_no_of(stockout),
        "task_id": task_id,
        "stage": stage,
        "attempt": attempt,
        "outcome": outcome,
        "duration_s": duration_s,
        **fields,
    }
    if error is not None:
        extra["error"] = error_name
        extra.setdefault("code", getattr(error, "code", "") or "")
    log.log(level, message, extra=extra)
