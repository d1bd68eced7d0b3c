"""The beat's task: thin, the work is in producer.poll."""
from __future__ import annotations

from producer.poll import poll_once
from shared.celery_app import POLL_TASK, app
from shared.messages import publish_stockout
from shared.runtime import runtime


@app.task(name=POLL_TASK, acks_late=False)
def poll() -> dict:
    # acks_late off: a poll that dies is simply run again by the next beat; redelivering it would
    # only race that next one for the lock.
    return poll_once(runtime(), publish_stockout).model_dump()
