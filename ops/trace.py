"""Where is stockout X: everything WDT, our Redis state, the queues and BIP know about one stockout.
How a task is known without a result backend: docs/design.md, "Trace"."""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from shared.backlog import PRIORITY_SUFFIXES  # kombu's Redis priority queues, as `status` counts them
from shared.celery_app import STOCKOUT_QUEUE, get_app
from shared.deadletters import DeadLetter, DeadLetterStore
from shared.errors import StockoutSyncError
from shared.keys import Keys
from shared.state import parse_done, stockout_key
from shared.timeutil import format_wire, now_beijing, parse_wire

if TYPE_CHECKING:  # for the annotations only: the runtime loads shared.metrics, which must come after the exporter
    from shared.runtime import Runtime

SCAN_CHUNK = 1000  # queue entries one script call looks at: each call stays well under a millisecond
SCAN_LIMIT = 200_000  # entries a trace reads at most, per queue
# WDT statuses beside its default 95 and 110 (docs/apis.md), most likely first
OTHER_STATUSES = ("113", "55", "50", "5")
_ORDER_NO = re.compile(r"'order_no': '([^'\\]*)'")

# KEYS: a queue. ARGV: first index, last index, text. The entries in that range containing the text:
# the search runs in Redis, so only matches cross the wire, and a chunk at a time, so it never stalls.
_FIND = """
local found = {}
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])) do
  if string.find(entry, ARGV[3], 1, true) then table.insert(found, entry) end
end
return found
"""

Verdict = Literal["never seen", "filtered out", "not polled yet", "queued", "in flight", "done", "dead-lettered"]


class WdtView(BaseModel):
    found: bool = False
    status: str = ""
    order_type: str = ""
    warehouse_no: str = ""
    modified: str = ""
    consign_time: str = ""
    passes_filters: bool | None = None
    filter_reason: str = ""
    error: str = ""


class TaskSeen(BaseModel):
    task_id: str
    state: str
    where: str
    retries: int = 0
    eta: str = ""
    order_no: str = ""


class Trace(BaseModel):
    query: str
    stockout_id: str = ""
    order_no: str = ""
    verdict: Verdict = "never seen"
    summary: str = ""
    wdt: WdtView = Field(default_factory=WdtView)
    mark: Literal["none", "queued", "done"] = "none"
    bip_id: str = ""
    bip_code: str = ""
    lock_holder: str = ""
    lock_ttl_s: float | None = None
    dead_letter: DeadLetter | None = None
    requeued_letter: DeadLetter | None = None  # requeued since: its history, not failed again (yet)
    tasks: list[TaskSeen] = Field(default_factory=list)
    scanned: dict[str, int] = Field(default_factory=dict)
    result_backend: str | None = None
    bip: dict[str, Any] | None = None
    bip_error: str = ""
    cursor: str = ""

    @property
    def known(self) -> bool:
        return self.wdt.found or self.mark != "none" or bool(self.tasks or self.dead_letter or self.requeued_letter
                                                              or self.lock_holder)


def trace(rt: Runtime, name: str, *, scan_limit: int = SCAN_LIMIT) -> Trace:
    """`name` is a WDT order number or a stockout id: our own indexes first, then WDT."""
    t = Trace(query=name)
    letters = DeadLetterStore(rt.redis, rt.settings.redis_prefix)
    letters.expire()
    raw: dict | None = None
    asked_wdt = False
    if sid := letters.find_order(name):
        t.stockout_id, t.order_no = sid, name
    elif _known_here(rt, letters, name):
        t.stockout_id = name
    else:
        raw, asked_wdt = _wdt(rt, name, t), True
        t.stockout_id = stockout_key(raw) if raw is not None else name  # else taken as an id nobody knows
        t.order_no = str(raw.get("order_no") or name) if raw is not None else ""

    sid = t.stockout_id
    t.dead_letter = letters.get(sid)
    t.requeued_letter = letters.history(sid)
    _mark(rt, t)
    _lock(rt, t)
    _tasks(rt, t, scan_limit)
    t.result_backend = _backend()
    if t.bip_id:
        _bip(rt, t)
    cursor = rt.store.cursor()
    t.cursor = format_wire(cursor) if cursor else ""

    t.order_no = t.order_no or _order_no_from(t)  # asked by id: the number from whatever names it
    if t.order_no and not asked_wdt:
        raw = _wdt(rt, t.order_no, t)
    _judge(t)
    return t


def _known_here(rt: Runtime, letters: DeadLetterStore, sid: str) -> bool:
    """Whether `sid` is a stockout id our state knows (then WDT is asked by its order number, found here)."""
    return bool(rt.store.states([sid]).get(sid) or letters.get(sid) or letters.history(sid)
                or rt.redis.exists(Keys(rt.settings.redis_prefix).lock(sid)))


def _wdt(rt: Runtime, number: str, t: Trace) -> dict | None:
    """The stockout from WDT by number: in its default statuses first, then in each other one (one
    call each, so only for an order that is not where the producer looks)."""
    try:
        raw = rt.wdt.get_by_no(number)
        for status in OTHER_STATUSES:
            if raw is not None:
                break
            raw = rt.wdt.get_by_no(number, status=status)
    except StockoutSyncError as err:
        t.wdt = WdtView(error=f"{type(err).__name__}: {err}")
        return None
    if raw is None:
        return None
    t.wdt = WdtView(found=True, **{k: str(raw.get(k) or "") for k in
                                   ("status", "order_type", "warehouse_no", "modified", "consign_time")})
    try:
        ok, why = rt.mapping.passes_filters(raw)
        t.wdt.passes_filters, t.wdt.filter_reason = ok, why
    except Exception as err:  # a broken mapping file: say so, the rest of the trace still helps
        t.wdt.filter_reason = f"mapping unreadable: {err}"
    return raw


def _mark(rt: Runtime, t: Trace) -> None:
    state = rt.store.states([t.stockout_id]).get(t.stockout_id)
    done = parse_done(state)
    if done is not None:
        t.mark, t.bip_id, t.bip_code = "done", done.bip_id, done.bip_code
    elif state is not None:
        t.mark = "queued"


def _lock(rt: Runtime, t: Trace) -> None:
    key = Keys(rt.settings.redis_prefix).lock(t.stockout_id)
    pipe = rt.redis.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    holder, pttl = pipe.execute()
    if holder:
        t.lock_holder = holder.decode()
        t.lock_ttl_s = round(pttl / 1000, 1) if pttl and pttl > 0 else None


def _needle(sid: str) -> str:
    # Every message names its stockout so in its headers: the short `kwargsrepr` of a first publish
    # ({'stockout_id': …}) and Celery's repr of the whole stockout in a retry alike.
    return f"'stockout_id': '{sid}'"


def _tasks(rt: Runtime, t: Trace, scan_limit: int) -> None:
    k, r, needle = Keys(rt.settings.redis_prefix), rt.redis, _needle(t.stockout_id)
    find = r.register_script(_FIND)
    for suffix in PRIORITY_SUFFIXES:
        key = k.queue(STOCKOUT_QUEUE, suffix)
        length = min(int(r.llen(key)), scan_limit)
        for start in range(0, length, SCAN_CHUNK):
            for entry in find(keys=[key], args=[start, min(start + SCAN_CHUNK, length) - 1, needle]):
                t.tasks.append(_seen(json.loads(entry), "waiting on the stockouts queue", "queued"))
        if suffix == "" or length:
            t.scanned[STOCKOUT_QUEUE] = t.scanned.get(STOCKOUT_QUEUE, 0) + length
    delivered = 0
    for _tag, value in r.hscan_iter(k.unacked, count=500):
        delivered += 1
        if needle.encode() in value:
            message = json.loads(value)[0]
            t.tasks.append(_seen(message, "delivered to a worker (unacknowledged)", "reserved"))
    t.scanned["unacked"] = delivered
    for task in t.tasks:
        if task.task_id == t.lock_holder:
            task.state = "running (holds the lock)"
        elif task.state == "reserved" and task.eta and (eta := _eta(task.eta)) and eta > now_beijing():
            task.state = f"waiting to retry at {format_wire(eta)}"
    if t.dead_letter and t.dead_letter.task_id:
        t.tasks.append(TaskSeen(task_id=t.dead_letter.task_id, state="failed (dead-lettered)",
                                where="the dead letter", retries=max(0, t.dead_letter.attempts - 1)))


def _seen(message: dict, where: str, state: str) -> TaskSeen:
    headers = message.get("headers") or {}
    named = _ORDER_NO.search(str(headers.get("kwargsrepr") or ""))
    return TaskSeen(task_id=str(headers.get("id", "")), state=state, where=where,
                    retries=int(headers.get("retries") or 0), eta=str(headers.get("eta") or ""),
                    order_no=named.group(1) if named else "")


def _eta(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _backend() -> str | None:
    conf = get_app().conf
    return None if conf.task_ignore_result or not conf.result_backend else str(conf.result_backend).split("://")[0]


def _bip(rt: Runtime, t: Trace) -> None:
    try:
        t.bip = rt.bip.detail(t.bip_id)
        if t.bip is None:
            t.bip_error = f"BIP has no record {t.bip_id} (deleted in BIP?)"
    except StockoutSyncError as err:
        t.bip_error = f"{type(err).__name__}: {err}"


def _order_no_from(t: Trace) -> str:
    for letter in (t.dead_letter, t.requeued_letter):
        if letter and letter.order_no:
            return letter.order_no
    for task in t.tasks:
        if task.order_no:
            return task.order_no
    for line in (t.bip or {}).get("othOutRecords") or []:  # the worker writes the order number as upcode
        if isinstance(line, dict) and line.get("upcode"):
            return str(line["upcode"])
    return ""


def _judge(t: Trace) -> None:
    """The one-line answer, from the most telling fact down."""
    running = [task for task in t.tasks if task.state.startswith(("running", "reserved", "waiting to retry"))]
    if t.dead_letter:
        t.verdict = "dead-lettered"
        t.summary = f"{t.dead_letter.last_failed_at}, after {t.dead_letter.attempts} attempt(s): {t.dead_letter.reason}"
    elif t.lock_holder or running:
        t.verdict = "in flight"
        who = t.lock_holder or running[0].task_id
        t.summary = f"a worker is on it: task {who}" + (f" ({running[0].state})" if running else "")
    elif t.mark == "done":
        t.verdict = "done"
        t.summary = f"saved in BIP as {t.bip_code or '?'} (id {t.bip_id or '?'})"
    elif t.tasks or t.mark == "queued":
        t.verdict = "queued"
        scanned = f"scanned {t.scanned.get(STOCKOUT_QUEUE, 0)} queued and {t.scanned.get('unacked', 0)} delivered"
        t.summary = ("waiting on the stockouts queue" if t.tasks else
                     f"marked queued, but no message found ({scanned}); `stockout-sync reconcile --requeue-missing` "
                     "publishes it again")
    elif t.wdt.found and t.wdt.passes_filters is False:
        t.verdict = "filtered out"
        t.summary = f"WDT has it, the mapping's filters skip it: {t.wdt.filter_reason}"
    elif t.wdt.found and t.cursor and (modified := parse_wire(t.wdt.modified)) and \
            (cursor := parse_wire(t.cursor)) and modified > cursor:
        t.verdict = "not polled yet"
        t.summary = f"modified {t.wdt.modified}, after the cursor {t.cursor}: the next poll reads it"
    else:
        t.verdict = "never seen"
        t.summary = ("WDT has it, but nothing here knows it (older than the lookback? `stockout-sync backfill`)"
                     if t.wdt.found else "neither WDT nor anything here knows it")
