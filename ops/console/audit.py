"""The audit trail: every change made through the console (who, when, what, how many), a capped Redis
list (`Keys.audit`), newest first; shown on the console's Audit page and by `stockout-sync audit`."""
from __future__ import annotations

import redis
from pydantic import BaseModel, Field

from shared.core.timeutil import format_wire, now_beijing
from shared.redis.keys import Keys

AUDIT_KEPT = 10_000
SHOWN_IDS = 20  # ids kept in an entry; the count says how many there were


class AuditEntry(BaseModel):
    at: str  # Beijing time
    who: str
    role: str
    action: str  # e.g. dlq.requeue, dlq.purge, backfill.start, backfill.cancel, reconcile.requeue, login
    count: int = 0
    detail: str = ""  # the selection in words: a group, a filter, the mapping it went through
    ids: list[str] = Field(default_factory=list)

    def line(self) -> str:
        ids = f" [{' '.join(self.ids)}{' …' if self.count > len(self.ids) else ''}]" if self.ids else ""
        return f"{self.at} {self.who} ({self.role}) {self.action} ×{self.count}: {self.detail}{ids}"


class AuditTrail:
    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.r, self.key = r, Keys(prefix).audit

    def record(self, who: str, role: str, action: str, *, count: int = 0, detail: str = "",
               ids: list[str] | None = None) -> AuditEntry:
        entry = AuditEntry(at=format_wire(now_beijing()), who=who, role=role, action=action, count=count,
                           detail=detail[:500], ids=[i[:64] for i in (ids or [])[:SHOWN_IDS]])
        pipe = self.r.pipeline(transaction=True)  # never a list longer than AUDIT_KEPT
        pipe.lpush(self.key, entry.model_dump_json())
        pipe.ltrim(self.key, 0, AUDIT_KEPT - 1)
        pipe.execute()
        return entry

    def recent(self, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
        found = []
        for raw in self.r.lrange(self.key, offset, offset + max(0, limit - 1)):
            try:
                found.append(AuditEntry.model_validate_json(raw))
            except ValueError:
                continue  # a damaged entry is skipped, not fatal
        return found

    def count(self) -> int:
        return int(self.r.llen(self.key))


def record_cli_change(r: redis.Redis, prefix: str, action: str, *, count: int, detail: str = "",
                      ids: list[str] | None = None) -> None:
    """A change made with the CLI, in the same trail: who is the login name of the shell, role `cli`."""
    import getpass

    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's): the uid says it
        import os

        who = f"uid {os.getuid()}"
    AuditTrail(r, prefix).record(who, "cli", action, count=count, detail=detail, ids=ids)
