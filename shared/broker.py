"""The Redis broker transport, hardened in one place: an entry on a queue that is not even JSON.

kombu's Redis channel pops an entry with BRPOP and decodes it; an entry that is not JSON (written by
anything that can reach Redis) raises out of the consumer loop and stops the whole worker. Here such
an entry is logged and dropped — it is not a message we ever published, so nothing is lost — and
the worker goes on. Messages that ARE JSON but carry pickle or another content type are refused by
Celery's own accept_content check, and never deserialised.
"""
from __future__ import annotations

import json
import logging
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("stockout_sync.broker")


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            log.error("dropped an entry on a queue that is not a message (not JSON): %s", err)
            raise Empty() from None


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
