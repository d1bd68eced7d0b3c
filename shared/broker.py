"""The Redis broker transport, hardened in one place: an entry on a queue that is not even JSON is
logged and dropped instead of stopping the worker, and a message popped just as Redis goes away is put
back; the Sentinel flavour (`sentinel://`) gets the same (docs/design.md, "The hardened broker transport")."""
from __future__ import annotations

import json
import logging
import time
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("stockout_sync.broker")

# How long a popped message waits for Redis to answer again before it is given up (and left to
# `stockout-sync reconcile`): longer than a Sentinel failover.
PUT_BACK_WAIT_S = 60.0


class _PutsBackWhatItCouldNotRecord(kombu_redis.QoS):
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


class _DropsNonMessages:
    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            log.error("dropped an entry on a queue that is not a message (not JSON): %s", err)
            raise Empty() from None


class Channel(_DropsNonMessages, kombu_redis.Channel):
    QoS = _PutsBackWhatItCouldNotRecord


class SentinelChannel(_DropsNonMessages, kombu_redis.SentinelChannel):
    QoS = _PutsBackWhatItCouldNotRecord


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"
