"""Whether Redis keeps every key we write: its eviction policy and persistence, read with CONFIG GET
(INFO when CONFIG is refused, as managed Redis does). Why an evicting Redis is refused: docs/design.md,
"A Redis that may drop keys"."""
from __future__ import annotations

import redis
from pydantic import BaseModel

SAFE_POLICY = "noeviction"


class Durability(BaseModel):
    policy: str | None = None  # maxmemory-policy; None: the server would not say
    aof: bool | None = None  # appendonly
    rdb: bool | None = None  # any `save` point; None: unknown (INFO does not say)
    refused: str = ""  # why CONFIG (and INFO) could not be read, in words

    @property
    def evicts(self) -> bool:
        return self.policy is not None and self.policy != SAFE_POLICY

    def eviction_problem(self, *, allowed: bool = False) -> str | None:
        """The one line that refuses an evicting Redis (None when it keeps every key, or the risk is taken)."""
        if not self.evicts or allowed:
            return None
        return (f"Redis maxmemory-policy is {self.policy!r}: it may evict the done marks and the cursor, and every "
                f"stockout whose mark is evicted is saved to BIP again — set maxmemory-policy {SAFE_POLICY} "
                "(redis.conf, or your provider's parameter group), or REDIS_ALLOW_EVICTION=true to run at that risk")

    def warnings(self, *, allowed: bool = False) -> list[str]:
        found = []
        if self.evicts and allowed:
            found.append(f"Redis maxmemory-policy is {self.policy!r} and REDIS_ALLOW_EVICTION=true: an evicted done "
                         "mark or cursor means stockouts saved twice")
        if self.refused and self.policy is not None:
            found.append(f"Redis refused CONFIG ({self.refused}): its maxmemory-policy was read from INFO")
        if self.policy is None:
            found.append(f"Redis would not tell its maxmemory-policy ({self.refused}): make sure it is "
                         f"{SAFE_POLICY}, or evicted done marks mean stockouts saved twice")
        if self.aof is False and self.rdb is False:
            found.append("Redis persistence is off (appendonly no, no save points): a Redis restart loses every "
                         "done mark and the cursor — set appendonly yes")
        elif self.aof is False and self.rdb is None:
            found.append("Redis appendonly is off (its save points are unknown): a restart may lose the last "
                         "done marks — set appendonly yes")
        elif self.aof is False:
            found.append("Redis appendonly is off (RDB snapshots only): a restart loses the writes since the last "
                         "snapshot — set appendonly yes")
        return found

    def line(self) -> str:
        persistence = ", ".join(name for name, on in (("AOF", self.aof), ("RDB", self.rdb)) if on) or (
            "off" if self.aof is False and self.rdb is False else "unknown")
        return f"maxmemory-policy {self.policy or 'unknown'}; persistence {persistence}"


def inspect(r: redis.Redis) -> Durability:
    """What the server says of itself; a server that refuses CONFIG is asked through INFO, and one that
    refuses both is reported as unknown, never as an error."""
    try:
        config: dict[str, str] = {}
        for name in ("maxmemory-policy", "appendonly", "save"):  # one each: Redis < 7 takes one pattern
            config.update({_text(k): _text(v) for k, v in r.config_get(name).items()})
        return Durability(policy=config.get("maxmemory-policy") or None, aof=_yes(config.get("appendonly")),
                          rdb=None if "save" not in config else bool(config["save"].strip()))
    except redis.ResponseError as err:  # renamed or denied (rename-command, ACL): NoPermissionError is one
        refused = f"CONFIG refused: {str(err)[:120]}"
    try:
        memory, persistence = r.info("memory"), r.info("persistence")
    except redis.ResponseError as err:
        return Durability(refused=f"{refused}; INFO refused: {str(err)[:120]}")
    policy = memory.get("maxmemory_policy")
    aof = persistence.get("aof_enabled")
    return Durability(policy=str(policy) if policy else None, aof=None if aof is None else bool(int(aof)),
                      refused=refused)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _yes(value: str | None) -> bool | None:
    return None if value is None else value.strip().lower() == "yes"
