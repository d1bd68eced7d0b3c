"""`sentinel://` URLs, kombu's form, read the same way by our Redis client, by kombu and by Settings'
check at start-up (which is why this is in core: Settings imports nothing above it)."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

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
