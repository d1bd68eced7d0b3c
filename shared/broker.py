"""The Redis broker transport, hardened in one place: an entry on a queue that is not even JSON is
logged and dropped instead of stopping the worker (docs/design.md, "The hardened broker transport")."""
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
