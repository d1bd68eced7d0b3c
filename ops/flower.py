"""Flower as operators need it: the stockout and the reason on the task list, failures kept across
restarts (`--persistent` with its database on disk), the dead-letter queue's length, requeued failures
off the Failed list, `/metrics` and `/healthcheck` behind the same basic auth, and an environment
holding only what Flower needs (never an API secret)."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

# One screen answers "which stockout failed, and why" (Flower's default shows name/uuid/state only).
TASKS_COLUMNS = "name,kwargs,state,exception,received,worker"
# Flower writes its state on SIGTERM; the periodic save bounds what a SIGKILL or an OOM kill loses.
STATE_SAVE_INTERVAL_MS = 60_000
CLEAN_MARK = "STOCKOUT_SYNC_FLOWER_ENV"
log = logging.getLogger("stockout_sync.flower")

# The settings Flower's Celery app reads (the broker and its key prefix), plus the ones Settings
# checks against each other, so the pairs stay consistent. API keys, secrets and alert URLs stay out.
_SERVICE_VARS = (
    "REDIS_URL", "REDIS_PREFIX", "REDIS_CA_CERTS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD",
    "LOG_FORMAT", "LOG_LEVEL", "BROKER_VISIBILITY_TIMEOUT_S", "TASK_TIME_LIMIT_S", "RETRY_BACKOFF_MAX_S",
    "HTTP_CONNECT_TIMEOUT_S", "HTTP_READ_TIMEOUT_S", "BREAKER_PROBE_INTERVAL_S", "LOOKBACK_S", "STATE_TTL_DAYS",
)
_SYSTEM_VARS = (
    "PATH", "HOME", "USER", "LANG", "LANGUAGE", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
)


def flower_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment Flower runs with: what it needs, the defaults we want, nothing else."""
    env = {k: v for k, v in environ.items()
           if k in _SERVICE_VARS or k in _SYSTEM_VARS or k.startswith(("FLOWER_", "LC_"))}
    env.setdefault("FLOWER_TASKS_COLUMNS", TASKS_COLUMNS)
    env.setdefault("FLOWER_STATE_SAVE_INTERVAL", str(STATE_SAVE_INTERVAL_MS))
    env[CLEAN_MARK] = "1"
    return env


def reexec_clean(argv: list[str]) -> None:
    """Start this command again with `flower_environment` (the same process id). Changing os.environ
    would not do: /proc/<pid>/environ keeps the environment the process was started with."""
    if os.environ.get(CLEAN_MARK) == "1":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "ops.cli", *argv], flower_environment(os.environ))


def protect_monitoring() -> None:
    """Flower 2.x serves /metrics and /healthcheck to anyone (no option changes that): put them
    behind the same authentication as its pages."""
    from flower import urls
    from flower.views import monitor
    from tornado import web

    class Metrics(monitor.Metrics):
        @web.authenticated
        async def get(self) -> None:
            await super().get()

    class Healthcheck(monitor.Healthcheck):
        @web.authenticated
        async def get(self) -> None:
            await super().get()

    replaced = {"/metrics": Metrics, "/healthcheck": Healthcheck}
    for i, handler in enumerate(urls.handlers):
        if isinstance(handler, tuple) and handler[0] in replaced:
            urls.handlers[i] = (handler[0], replaced[handler[0]])
    found = {h[0] for h in urls.handlers if isinstance(h, tuple)}
    if not set(replaced) <= found:  # a Flower that moved them: fail loudly rather than leave them open
        raise RuntimeError("Flower's /metrics or /healthcheck route was not found; cannot protect it")


def list_every_queue() -> None:
    """Flower's Broker page and /api/queues/length list the queues the workers consume, and the app's
    own only while no worker has answered yet: `dead_letter`, which nothing consumes, vanished as soon
    as one did. Here they list both, so its length is always shown."""
    from flower.views import BaseHandler

    consumed = BaseHandler.get_active_queue_names

    def names(self: BaseHandler) -> list[str]:
        return sorted(set(consumed(self)) | {q.name for q in self.capp.conf.task_queues or [] if q.name})

    BaseHandler.get_active_queue_names = names


def mark_requeued() -> None:
    """A failure that `dlq requeue` sent back leaves the Failed list: its state becomes REQUEUED and
    its result says when. Told by the requeue's event (shared/queue/events.py) while Flower runs, and
    caught up from the letters' history when it starts (a requeue while it was down); Flower's
    database keeps the state across restarts."""
    from flower.events import Events, EventsState

    from shared.queue.events import REQUEUED_EVENT

    handle = EventsState.event

    def event(self: EventsState, event: dict) -> None:
        if event.get("type") != REQUEUED_EVENT:
            handle(self, event)
            return
        # not handed to Celery's state: its sender would be listed as a worker
        for uuid in event.get("uuids") or []:
            task = self.tasks.get(uuid) if isinstance(uuid, str) else None
            _requeued(self, task, str(event.get("at", "?")))

    start = Events.start

    def start_caught_up(self: Events) -> None:
        _catch_up(self.state)
        start(self)

    EventsState.event = event
    Events.start = start_caught_up


def _requeued(state: Any, task: Any, at: str) -> None:
    from celery import states

    from shared.queue.events import REQUEUED_STATE

    if task is not None and task.state == states.FAILURE:
        task.state = REQUEUED_STATE
        task.result = f"requeued at {at} (Beijing) by `stockout-sync dlq requeue`"
        state._index_task(task, None)


def _catch_up(state: Any) -> None:
    """The failures Flower holds whose letter was requeued since (the letter's history says so)."""
    from celery import states

    from shared.core.settings import get_settings
    from shared.deadletters.store import DeadLetterStore
    from shared.queue.app import SYNC_TASK
    from shared.queue.publisher import labelled_stockout_id
    from shared.redis.conn import redis_client

    failed = [t for t in list(state.tasks.values()) if t.state == states.FAILURE and t.name == SYNC_TASK]
    if not failed:
        return
    settings = get_settings()
    store = DeadLetterStore(redis_client(settings), settings.redis_prefix)
    try:
        for task in failed:
            sid = labelled_stockout_id(str(task.kwargs or ""))
            story = (store.get(sid) or store.history(sid)) if sid else None
            at = story.requeued_after(task.uuid) if story is not None else None
            if at is not None:
                _requeued(state, task, at)
    except Exception as err:  # Flower starts anyway; the next requeue's event still marks its own
        log.warning("requeued failures not caught up (%s)", type(err).__name__)


def flower_argv(port: int, address: str, db: str, persistent: bool) -> list[str]:
    return ["flower", f"--port={port}", f"--address={address}", f"--persistent={persistent}", f"--db={db}"]
