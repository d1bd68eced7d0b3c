"""The dead letter: what failed, where and why, the stockout kept whole, its history; the group an
operator fixes (`fix_key`) and how a letter's story goes on (`merge`). Why: docs/design.md, "Dead letters"."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

Stage = Literal["fetch", "transform", "save", "internal", "receive", "publish"]
HISTORY_MAX = 50  # a letter requeued and failing forever keeps its first failure and the latest ones


class HistoryEntry(BaseModel):
    """One thing that happened to a letter: a failure that dead-lettered it, or an operator's requeue."""

    at: str
    event: Literal["dead_lettered", "requeued"] = "dead_lettered"
    stage: Stage | None = None
    error_class: str = ""
    code: str = ""
    message: str = ""
    attempts: int = 0
    task_id: str = ""

    def line(self) -> str:
        if self.event == "requeued":
            return f"{self.at} requeued"
        code = f" {self.code}" if self.code else ""
        return (f"{self.at} dead-lettered after {self.attempts} attempt(s): "
                f"{self.stage}: {self.error_class}{code}: {self.message}")


class DeadLetter(BaseModel):
    stockout_id: str
    order_no: str = ""
    stage: Stage
    error_class: str
    message: str
    api: str = ""
    code: str = ""
    api_message: str = ""
    http_status: int | None = None
    attempts: int = 1  # every attempt since the first failure, requeues included
    first_failed_at: str
    last_failed_at: str
    task_id: str = ""
    message_id: str = ""
    worker_host: str = ""
    mapping_fingerprint: str = ""
    stockout: dict[str, Any] = Field(default_factory=dict)
    history: list[HistoryEntry] = Field(default_factory=list)
    # "malformed": a queue entry that was no message we can run (shared/queue/poison.py); it has no
    # stockout to sync, only the entry as received (`raw`: UTF-8 text, other bytes as \\xNN).
    kind: Literal["stockout", "malformed"] = "stockout"
    queue: str = ""
    raw: str = ""

    @property
    def malformed(self) -> bool:
        return self.kind == "malformed"

    @property
    def reason(self) -> str:
        if self.malformed:
            return f"malformed message: {self.message}"
        code = f" [{self.api} {self.code}]" if self.code else ""
        return f"{self.stage}: {self.error_class}{code}: {self.message}"

    @property
    def group(self) -> str:
        """What the operator has to fix (fix_key): one group per fix, in `status` and the console."""
        return fix_key(self)

    def matches(self, *, reason: str | None = None, code: str | None = None, group: str | None = None,
                warehouse: str | None = None, day: str | None = None) -> bool:
        """The operator's filter: `reason` is a case-blind part of the reason, `code` the remote code,
        `group` the kind of failure and `warehouse` the stockout's warehouse_no exactly, `day` the
        Beijing date (yyyy-MM-dd) of the last failure."""
        if reason and reason.lower() not in self.reason.lower():
            return False
        if group and group != self.group:
            return False
        if warehouse and warehouse != str(self.stockout.get("warehouse_no", "")):
            return False
        if day and not self.last_failed_at.startswith(day):
            return False
        return not (code and code != self.code)

    def failure(self) -> HistoryEntry:
        return HistoryEntry(at=self.last_failed_at, stage=self.stage, error_class=self.error_class, code=self.code,
                            message=self.message, attempts=self.attempts, task_id=self.task_id)

    def requeued_after(self, task_id: str) -> str | None:
        """When this letter was requeued after the failure of task `task_id` (None: not since, or unknown)."""
        failed = next((i for i, e in enumerate(self.history) if e.event == "dead_lettered" and e.task_id == task_id),
                      None)
        if failed is None:
            return None
        return next((e.at for e in self.history[failed + 1:] if e.event == "requeued"), None)


def summary(record: dict[str, Any]) -> DeadLetter:
    stockout = record.get("stockout")
    has_warehouse = isinstance(stockout, dict) and "warehouse_no" in stockout
    kept = {"warehouse_no": stockout["warehouse_no"]} if has_warehouse else {}  # type: ignore[index]
    return DeadLetter.model_validate({**record, "stockout": kept, "history": [], "raw": ""})


_LINE_INDEX = re.compile(r"\[\d+\]")
FIX_KEY_MAX = 160


def fix_key(letter: DeadLetter) -> str:
    """What the operator has to fix, the same for every letter one fix mends: the missing warehouse,
    the unknown material or unit, the remote code and its words. The stockout's own id, order number
    and line index are taken out; the text after " (" (hints, where in the stockout) too. Status
    groups by it; the console and the alerts can."""
    if letter.malformed:
        return f"malformed message: {_head(letter, letter.message)}"
    if letter.code or letter.api_message:
        said = _head(letter, letter.api_message or letter.message)
        return f"{letter.stage}: [{letter.api} {letter.code or '-'}] {said}"
    if letter.http_status is not None:
        return f"{letter.stage}: {letter.error_class} HTTP {letter.http_status}"
    return f"{letter.stage}: {_head(letter, letter.message)}"


def _head(letter: DeadLetter, text: str) -> str:
    for own, shown in ((letter.order_no, "<order_no>"), (letter.stockout_id, "<stockout_id>")):
        if own:
            text = text.replace(own, shown)
    text = _LINE_INDEX.sub("[*]", text).split(" (", 1)[0].strip()
    return text if len(text) <= FIX_KEY_MAX else text[:FIX_KEY_MAX - 1] + "…"


def merge(previous: DeadLetter | None, letter: DeadLetter) -> DeadLetter:
    """`letter` (this failure) continuing the story of `previous` (the same stockout's earlier letter)."""
    if previous is None:
        return letter.model_copy(update={"history": trimmed([*letter.history, letter.failure()])})
    return letter.model_copy(update={
        "first_failed_at": previous.first_failed_at,
        "attempts": previous.attempts + letter.attempts,
        "history": trimmed([*previous.history, letter.failure()]),
    })


def requeued(letter: DeadLetter, at: str) -> DeadLetter:
    """The letter with its requeue at `at` added to the history."""
    return letter.model_copy(update={"history": trimmed([*letter.history, HistoryEntry(at=at, event="requeued")])})


def trimmed(history: list[HistoryEntry]) -> list[HistoryEntry]:
    return history if len(history) <= HISTORY_MAX else [history[0], *history[-(HISTORY_MAX - 1):]]
