"""What Flower is told beyond Celery's own task events: a dead-lettered task's `dlq show` line, and the
failures a `dlq requeue` resolved (ops/flower.py reads them). Why: docs/design.md, "Flower"."""
from __future__ import annotations

import logging
import shlex
import socket
from collections.abc import Iterable

from shared.core.timeutil import format_wire, now_beijing
from shared.queue.app import get_app

log = logging.getLogger("stockout_sync.flower")

# A task event of the worker's own (Celery's state keeps its fields; FAILURE still wins as the state).
DEAD_LETTERED_EVENT = "task-dead-lettered"
# Not a task event: Flower's patched state reads it; Celery's own would make its sender a "worker".
REQUEUED_EVENT = "stockout-requeued"
REQUEUED_STATE = "REQUEUED"
BATCH = 500  # task ids per event
_NAME_MAX = 64


def dlq_hint(stockout_id: str, order_no: str = "") -> str:
    """The command that shows the letter: by order number when it is plain text, else by stockout id."""
    name = order_no if order_no and len(order_no) <= _NAME_MAX and order_no.isprintable() else stockout_id
    return f"dead letter: stockout-sync dlq show {shlex.quote(name[:_NAME_MAX])}"


def announce_requeued(task_ids: Iterable[str]) -> None:
    """Tell Flower these failed tasks were requeued (best effort: a Flower that is not running misses it
    and finds it in the letters' history when it starts)."""
    ids = [task_id for task_id in task_ids if task_id]
    if not ids:
        return
    at = format_wire(now_beijing())
    try:
        with get_app().events.default_dispatcher(hostname=f"dlq@{socket.gethostname()}") as dispatcher:
            for start in range(0, len(ids), BATCH):
                dispatcher.send(REQUEUED_EVENT, uuids=ids[start:start + BATCH], at=at, retry=False)
    except Exception as err:  # the requeue itself is done; only Flower's mark is missing
        log.warning("Flower was not told of %d requeued task(s) (%s)", len(ids), type(err).__name__)
