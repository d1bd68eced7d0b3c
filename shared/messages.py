"""Messages on the queues: one `stockouts` message per stockout, and its dead-letter copy."""
from __future__ import annotations

from shared.celery_app import DEAD_LETTER_QUEUE, STOCKOUT_QUEUE, SYNC_TASK, app


def message_label(raw: dict, key: str) -> str:
    """What Flower shows as the task's arguments: who the stockout is, not the whole document."""
    order_no = raw.get("order_no", "") if isinstance(raw, dict) else ""
    return repr({"stockout_id": key, "order_no": order_no})


def publish_stockout(raw: dict, key: str, *, queue: str = STOCKOUT_QUEUE, task_id: str | None = None) -> str:
    result = app.send_task(
        SYNC_TASK,
        kwargs={"stockout": raw},
        queue=queue,
        routing_key=queue,
        exchange=queue,
        task_id=task_id,
        kwargsrepr=message_label(raw, key),
        argsrepr="()",
    )
    return result.id


def publish_dead_letter(raw: dict, key: str, task_id: str) -> str:
    return publish_stockout(raw, key, queue=DEAD_LETTER_QUEUE, task_id=task_id)
