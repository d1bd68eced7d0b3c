"""The Redis broker transport, hardened in one place: an entry on a queue that is not even JSON.

kombu's Redis channel pops an entry with BRPOP and decodes it; an entry that is not JSON (written by
anything that can reach Redis) raises out of the consumer loop and stops the whole worker. Here such
an entry is logged and dropped — it is not a message we ever published, so nothing is lost — and
the worker goes on. Messages that ARE JSON but carry pickle or another content type are refused by
Celery's own accept_content check, and never deserialised. The same hardening applies to the
Sentinel flavour of the transport (`sentinel://` broker URLs), which finds the master through Sentinel.
"""
from __future__ import annotations

import json
import logging
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("stockout_sync.broker")


class _DropsNonMessages:
    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            log.error("dropped an entry on a queue that is not a message (not JSON): %s", err)
            raise Empty() from None


class Channel(_DropsNonMessages, kombu_redis.Channel):
    pass


class SentinelChannel(_DropsNonMessages, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"
