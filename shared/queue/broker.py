"""The Redis broker transport, hardened in one place: no queue entry can stop a consumer, and a
message popped just as Redis goes away is put back; the Sentinel flavour (`sentinel://`) gets the same
(docs/design.md, "The hardened broker transport"). Every entry on a task queue is checked on its raw
bytes first (shared/queue/poison.py); one that cannot be run becomes a dead letter with those bytes and the
reason, and the consumer goes on. Pickle and other content types never get decoded."""
from __future__ import annotations

import logging
import time
from functools import cached_property
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from shared.core.settings import Settings, get_settings
from shared.deadletters.store import DeadLetterStore
from shared.queue import poison
from shared.queue.app import get_app
from shared.redis.conn import redis_client

log = logging.getLogger("stockout_sync.broker")

# How long a popped message waits for Redis to answer again before it is given up (and left to
# `stockout-sync reconcile`): longer than a Sentinel failover.
PUT_BACK_WAIT_S = 60.0


class _PutsBackWhatItCouldNotRecord(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        # A channel closed after its transport was detached from its connection (seen when a Sentinel
        # failover breaks the consumer's connection under load) cannot make a Redis client: kombu raises
        # AttributeError, which neither kombu nor Celery catches, and the worker exits ("Unrecoverable
        # error"). The messages stay in the unacked hash, which the redelivery sweep puts back.
        transport = self.channel.connection
        if transport is None or transport.client is None:
            log.warning("the broker connection is gone: unacknowledged messages are left to the redelivery sweep")
            return
        super().restore_unacked(client)

    def append(self, message: Any, delivery_tag: Any) -> None:
        try:
            super().append(message, delivery_tag)
        except self.channel.connection_errors:
            self._put_back(message)
            raise  # the consumer reconnects, as it would have; the message never reached a task

    def _put_back(self, message: Any) -> None:
        channel = self.channel
        info = message.delivery_info
        deadline = time.monotonic() + PUT_BACK_WAIT_S
        while True:
            try:
                with channel.conn_or_acquire() as client, client.pipeline() as pipe:
                    channel._do_restore_message(message._raw, info["exchange"], info["routing_key"], pipe)
                    pipe.execute()
                log.warning("Redis went away as a message was taken: put it back on queue %s", info["routing_key"])
                return
            except channel.connection_errors:
                if time.monotonic() > deadline:
                    log.error("Redis did not come back within %.0f s: a message taken from queue %s is lost "
                              "to the broker; `stockout-sync reconcile --requeue-missing` sends it again",
                              PUT_BACK_WAIT_S, info["routing_key"])
                    return
                time.sleep(0.5)


class _Quarantines:
    # mixed into both channels: `self: Any` is the kombu Redis channel it is mixed into
    def _brpop_read(self: Any, **options: Any) -> bool:
        # kombu 5.x's own `_brpop_read`, with the entry checked before it is decoded: the raw bytes
        # are only in hand here, and kombu decodes them in the same statement it delivers them.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # a broken connection is dropped, so the next cycle reconnects (as kombu does)
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            if self._quarantined(item, dest):
                raise Empty()
            self.connection._deliver(loads(bytes_to_str(item)), dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu ≥ 5.6 re-authenticates here
            if flush is not None:
                flush()

    def _quarantined(self: Any, item: bytes, queue: str) -> bool:
        tasks = self._tasks if queue in self._task_queues else None  # else a reply to a broadcast
        problem = poison.what_is_wrong(item, max_bytes=self._settings.max_message_bytes, tasks=tasks)
        if problem is None:
            return False
        try:
            poison.quarantine(self._dead_letters, item, problem, queue=queue)
        except Exception as err:
            # Popped already, and our Redis answered the BRPOP a moment ago, so this is rare; the
            # entry goes to the log rather than stop the consumer (which would not bring it back).
            log.error("%s on queue %s (%s) could not be dead-lettered (%s: %s); it is only in this line: %.2000s",
                      poison.MALFORMED, queue, problem, type(err).__name__, err, poison.escaped(item))
        return True

    @cached_property
    def _settings(self) -> Settings:
        return get_settings()

    @cached_property
    def _dead_letters(self) -> DeadLetterStore:
        return DeadLetterStore(redis_client(self._settings), self._settings.redis_prefix)

    @cached_property
    def _task_queues(self) -> set[str]:
        return {queue.name for queue in get_app().conf.task_queues or ()}

    @cached_property
    def _tasks(self) -> dict[str, Any]:
        # The run functions, by name. A worker has imported the task modules (the app's `include`)
        # already; any other consumer (a script reading a queue) imports them here, as Celery would.
        app = get_app()
        app.loader.import_default_modules()
        return {name: task.run for name, task in app.tasks.items()}


class Channel(_Quarantines, kombu_redis.Channel):  # type: ignore[misc]  # _in_poll: kombu types it loosely
    QoS = _PutsBackWhatItCouldNotRecord


class SentinelChannel(_Quarantines, kombu_redis.SentinelChannel):  # type: ignore[misc]  # the same
    QoS = _PutsBackWhatItCouldNotRecord


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


# Also spelt out in shared/queue/app.py, which must not import this module (it loads the runtime).
TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"
