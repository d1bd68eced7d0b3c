"""Asking the running Celery processes which queues they consume: one broadcast, for `status`, the
containers' health check and the alerts' "no worker" check."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from shared.queue.app import get_app


class Node(BaseModel):
    hostname: str  # Celery's node name, e.g. stockouts@host
    queues: list[str]


class _Enough(Exception):
    """Raised from the reply callback: the answer wanted has come, the rest is not waited for."""


def nodes(timeout_s: float, *, until: Callable[[Node], bool] | None = None) -> list[Node] | None:
    """Every node that answers within the timeout (sorted by name), or None when the broker could not
    be asked. With `until`, the wait ends at the first node it accepts: a health check of one host's
    process needs that one answer, not every answer the timeout would still let in."""
    app = get_app()
    found: list[Node] = []

    def on_reply(reply: dict[str, Any]) -> None:
        for hostname, queues in reply.items():
            node = Node(hostname=hostname, queues=sorted(q.get("name", "") for q in queues or []))
            found.append(node)
            if until is not None and until(node):
                raise _Enough

    try:
        # a connection of its own: the alerts ask from a thread beside the worker's consumer
        with app.connection_for_write() as conn:
            app.control.inspect(timeout=timeout_s, connection=conn, callback=on_reply).active_queues()
    except _Enough:
        pass
    except Exception:  # broker unreachable: "cannot tell", not "no workers"
        return None
    return sorted(found, key=lambda n: n.hostname)


def consumed_queues(timeout_s: float = 2.0) -> list[str] | None:
    """Every queue some node consumes, or None when the broker could not be asked."""
    answered = nodes(timeout_s)
    return None if answered is None else sorted({q for n in answered for q in n.queues})
