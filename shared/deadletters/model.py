"""The dead letter: what failed, where and why, the stockout kept whole, its history; the one way a
letter is made (`DeadLetter.new`), the group an operator fixes (`fix_key`) and how a letter's story goes
on (`merge`). Why: docs/design.md, "Dead letters"."""
from __future__ import annotations

import re
import socket
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, model_validator

from shared.core.errors import MappingError, StockoutSyncError
from shared.core.timeutil import format_wire, now_beijing
from shared.redis.state import order_no_of

# Where a stockout failed. In the worker: `transform` (the mapping), `save` (BIP), `state` (our Redis:
# done marks, locks, attempts, the token's cache) or `internal` (anything else: a bug, a time limit).
# Before a worker: `receive`, a queue entry no worker can run (shared/queue/poison.py), and `publish`,
# a message too large to send (shared/queue/publisher.py).
Stage = Literal["transform", "save", "state", "internal", "receive", "publish"]
STAGES: tuple[Stage, ...] = get_args(Stage)
# Versions before `state` wrote `fetch` for every failure of the worker neither the mapping's nor BIP's,
# though the worker never fetches: a letter stored so reads as the stage `stage_of` gives it now.
LEGACY_STAGE = "fetch"
_STAGE_OF_API: dict[str, Stage] = {"bip": "save", "redis": "state", "mapping": "transform"}
HISTORY_MAX = 50  # a letter requeued and failing forever keeps its first failure and the latest ones


def stage_of(error: BaseException) -> Stage:
    """The stage of a failure in the worker, from the error alone (what its log lines and metrics say too)."""
    if isinstance(error, MappingError):
        return "transform"
    if isinstance(error, StockoutSyncError):
        return _STAGE_OF_API.get(error.api, "internal")
    return "internal"


def stored_stage(record: Any) -> Stage:
    """The stage of a stored letter (its JSON as a dict) as `DeadLetter` reads it; one no version wrote
    counts as `internal` (the gauges read records without the model)."""
    stage = record.get("stage") if isinstance(record, dict) else None
    if stage == LEGACY_STAGE:
        return _STAGE_OF_API.get(str(record.get("api") or ""), "internal")
    return next((s for s in STAGES if s == stage), "internal")


class HistoryEntry(BaseModel):
    """One thing that happened to a letter: a failure that dead-lettered it, or an operator's requeue."""

    at: str
    event: Literal["dead_lettered", "requeued"] = "dead_lettered"
    # a line of history stays as it was written, an older version's `fetch` too (it names no api to go by)
    stage: Stage | Literal["fetch"] | None = None
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

    @model_validator(mode="before")
    @classmethod
    def _read_legacy_stage(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stage") == LEGACY_STAGE:
            return {**data, "stage": stored_stage(data)}
        return data

    @classmethod
    def new(cls, stockout_id: str, error: BaseException, *, stage: Stage, stockout: Any = None, attempts: int = 1,
            where: str = "", task_id: str = "", message_id: str = "", mapping_fingerprint: str = "",
            kind: Literal["stockout", "malformed"] = "stockout", queue: str = "", raw: str = "") -> DeadLetter:
        """The letter of this failure, however it came (the worker, the poison check, the publisher's size
        check): the error's class and words (a remote code and message too), the time, this host, the
        order number of the stockout. `where` says where in the stockout the fix goes ("(in the
        stockout: …)" after the message, which `fix_key` leaves out). The store redacts the stockout and
        adds up the attempts of a stockout that failed before (`DeadLetterStore.put`)."""
        now = format_wire(now_beijing())
        fields = error.to_dict() if isinstance(error, StockoutSyncError) else {}
        message = str(error) or type(error).__name__
        if where:
            message = f"{message} (in the stockout: {where})"
        return cls(
            stockout_id=stockout_id,
            order_no=order_no_of(stockout),
            stage=stage,
            error_class=type(error).__name__,
            message=message,
            api=fields.get("api", ""),
            code=fields.get("code", ""),
            api_message=fields.get("api_message", ""),
            http_status=fields.get("http_status"),
            attempts=attempts,
            first_failed_at=now,
            last_failed_at=now,
            task_id=task_id,
            message_id=message_id,
            worker_host=socket.gethostname(),
            mapping_fingerprint=mapping_fingerprint,
            stockout=stockout if isinstance(stockout, dict) else ({} if stockout is None else {"_raw": stockout}),
            kind=kind,
            queue=queue,
            raw=raw,
        )

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
