"""Long changes started from the console (a bulk requeue, a purge, a reconcile's requeue) run in a
thread of the console process, a batch at a time, so a page can show their progress; each one is
written to the audit trail when it ends, however it ends."""
from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import islice

from pydantic import BaseModel, Field

from ops.console.audit import AuditTrail
from shared.core.timeutil import format_wire, now_beijing

KEPT = 50  # finished operations remembered for their pages
BATCH = 200


class Operation(BaseModel):
    id: str
    action: str
    who: str
    role: str
    detail: str
    total: int
    done: int = 0
    state: str = "running"  # running | done | failed
    error: str = ""
    started_at: str = ""
    finished_at: str = ""
    ids: list[str] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state != "running"


class Operations:
    def __init__(self, audit: AuditTrail) -> None:
        self.audit = audit
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, op_id: str) -> Operation | None:
        with self._lock:
            op = self._ops.get(op_id)
            return op.model_copy() if op else None

    def start(self, action: str, who: str, role: str, detail: str, total: int,
              work: Callable[[], Iterator[list[str]]]) -> Operation:
        """Run `work` (yielding, batch after batch, the ids it acted on) in a thread of its own."""
        op = Operation(id=uuid.uuid4().hex[:12], action=action, who=who, role=role, detail=detail, total=total,
                       started_at=format_wire(now_beijing()))
        with self._lock:
            self._ops[op.id] = op
            while len(self._ops) > KEPT:
                self._ops.popitem(last=False)
        threading.Thread(target=self._finish, args=(op, work), name=f"console-{action}", daemon=True).start()
        return op.model_copy()

    def _finish(self, op: Operation, batches: Callable[[], Iterator[list[str]]]) -> None:
        acted: list[str] = []
        state, error = "done", ""
        try:
            for done in batches():
                acted.extend(done)
                with self._lock:
                    op.done = len(acted)
        except Exception as err:  # said on the page and in the audit trail, never a silent half
            state, error = "failed", f"{type(err).__name__}: {err}"[:500]
        finally:
            detail = op.detail + (f" — failed: {error}" if error else "")
            if op.total != len(acted) and not error:
                detail += f" ({op.total} selected; the others were gone meanwhile)"
            self.audit.record(op.who, op.role, op.action, count=len(acted), detail=detail, ids=acted)
            with self._lock:  # finished only once it is in the audit trail
                op.done, op.ids, op.finished_at = len(acted), acted[:20], format_wire(now_beijing())
                op.state, op.error = state, error


def in_batches(ids: list[str], step: Callable[[list[str]], list[str]]) -> Callable[[], Iterator[list[str]]]:
    """`step` (acting on a batch of ids, returning those it acted on) over `ids`, BATCH at a time."""
    def batches() -> Iterator[list[str]]:
        it = iter(ids)
        while chunk := list(islice(it, BATCH)):
            yield step(chunk)

    return batches
