"""Where is stockout X: everything WDT, our Redis state, the queues and BIP know about one stockout.
How a task is known without a result backend: docs/design.md, "Trace"."""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.bip.models import define1_of
from shared.core.errors import StockoutSyncError
from shared.core.timeutil import format_wire, now_beijing, parse_wire
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.queue.app import get_app
from shared.queue.depth import (  # kombu's Redis priority queues, as `status` counts them
    STOCKOUT_QUEUES,
)
from shared.redis.keys import BACKFILL_QUEUE, Keys
from shared.redis.state import parse_done, stockout_key
from shared.runtime import Runtime

SCAN_CHUNK = 1000  # queue entries one script call looks at: each call stays well under a millisecond
SCAN_LIMIT = 200_000  # entries a trace reads at most, per queue
# WDT statuses beside its default 95 and 110 (docs/apis.md), most likely first
OTHER_STATUSES = ("113", "55", "50", "5")
_ORDER_NO = re.compile(r"'order_no': '([^'\\]*)'")
_STOCKOUT_ID = re.compile(r"'stockout_id': '([^'\\]*)'")

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
    asked: bool = False
    calls: int = 0  # every call of the lookup, all statuses
    lookup: str = ""  # where it was found, or everywhere it was looked for (shared.wdt.lookup)
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
    stockout_id: str = ""
    queue: str = ""


class Trace(BaseModel):
    query: str
    stockout_id: str = ""
    order_no: str = ""
    verdict: Verdict = "never seen"
    summary: str = ""
    wdt: WdtView = Field(default_factory=WdtView)
    mark: Literal["none", "queued", "done"] = "none"
    mark_meaning: str = ""  # the mark read beside everything else (a dead letter's queued mark is not "queued")
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
    bip_found_by: str = ""  # "id" (the done mark's), "code" or "define1" (BIP's list)
    cursor: str = ""

    @property
    def known(self) -> bool:
        return self.wdt.found or self.mark != "none" or bool(self.tasks or self.dead_letter or self.requeued_letter
                                                              or self.lock_holder or self.bip)


def trace(rt: Runtime, name: str, *, scan_limit: int = SCAN_LIMIT) -> Trace:
    """`name` is a WDT order number or a stockout id. Everything of ours first (marks, letters,
    locks, messages, BIP by code or define1), without WDT; then WDT, from the times we know."""
    t = Trace(query=name)
    letters = DeadLetterStore(rt.redis, rt.settings.redis_prefix)
    letters.expire()
    if sid := letters.find_order(name):
        t.stockout_id, t.order_no = sid, name
    elif _known_here(rt, letters, name):
        t.stockout_id = name
    else:
        _tasks(rt, t, scan_limit, name)  # a message names its order number too
        if t.tasks:
            t.stockout_id, t.order_no = _sid_of(t.tasks, name), name
        elif sid := _bip_by_code(rt, t, name):
            t.stockout_id, t.order_no = sid, name
    if t.stockout_id:
        _ours(rt, t, letters, scan_limit)
    t.order_no = t.order_no or _order_no_from(t)  # asked by id: the number from whatever names it
    # WDT is asked by number only: an id known here whose number nothing names is not guessed at
    number = t.order_no or ("" if t.stockout_id else name)
    raw = _wdt(rt, number, t, _known_times(t)) if number else None
    if not t.stockout_id:
        t.stockout_id = stockout_key(raw) if raw is not None else name  # else taken as an id nobody knows
        t.order_no = str(raw.get("order_no") or name) if raw is not None else ""
        _ours(rt, t, letters, scan_limit)  # BIP by define1 too: our marks may be gone
    cursor = rt.store.cursor()
    t.cursor = format_wire(cursor) if cursor else ""
    t.result_backend = _backend()
    _judge(t)
    return t


def _ours(rt: Runtime, t: Trace, letters: DeadLetterStore, scan_limit: int) -> None:
    """What our state and BIP know of `t.stockout_id`."""
    sid = t.stockout_id
    t.dead_letter = letters.get(sid)
    t.requeued_letter = letters.history(sid)
    _mark(rt, t)
    _lock(rt, t)
    t.tasks = []
    _tasks(rt, t, scan_limit, None)
    if t.bip_id:
        _bip(rt, t)
    elif not t.bip:
        _bip_by_define1(rt, t)


def _known_here(rt: Runtime, letters: DeadLetterStore, sid: str) -> bool:
    """Whether `sid` is a stockout id our state knows (then WDT is asked by its order number, found here)."""
    return bool(rt.store.states([sid]).get(sid) or letters.get(sid) or letters.history(sid)
                or rt.redis.exists(Keys(rt.settings.redis_prefix).lock(sid)))


def letter_times(rt: Runtime, order_no: str) -> list[datetime]:
    """The times the dead letter (or requeued letter's history) of this order number knows."""
    letters = DeadLetterStore(rt.redis, rt.settings.redis_prefix)
    sid = letters.find_order(order_no)
    if not sid:
        return []
    return _known_times(Trace(query=order_no, dead_letter=letters.get(sid), requeued_letter=letters.history(sid)))


def _known_times(t: Trace) -> list[datetime]:
    """When the order was last seen modified or consigned (its letter, the BIP record's date): where
    a lookup asks first."""
    found: list[datetime] = []
    for letter in (t.dead_letter, t.requeued_letter):
        for key in ("modified", "consign_time"):
            value = (letter.stockout if letter else {}).get(key)
            if isinstance(value, str) and (when := _time(value)) is not None:
                found.append(when)
    vouchdate = str((t.bip or {}).get("vouchdate") or "")[:10]
    if (when := _time(f"{vouchdate} 00:00:00")) is not None:
        found.append(when)
    return found


def _time(text: str) -> datetime | None:
    try:
        return parse_wire(text)
    except ValueError:
        return None


def _wdt(rt: Runtime, number: str, t: Trace, near: list[datetime]) -> dict | None:
    """The stockout from WDT by number (one lookup, shared.wdt.lookup): in its default statuses to
    the horizon, then in each other status near what we know and in the last 30 days only (an order
    cancelled or awaiting review is a recent one)."""
    found = rt.wdt.find_by_no(number, near=near)
    calls = found.calls
    for status in OTHER_STATUSES:
        if found.record is not None or found.error is not None:
            break
        other = rt.wdt.find_by_no(number, near=near, status=status, horizon_days=30)
        calls += other.calls
        if other.record is not None or other.error is not None:
            found = other
    others = (f"; {calls - found.calls} more in statuses {'/'.join(OTHER_STATUSES)}: {calls} calls in all"
              if calls > found.calls else "")
    t.wdt = WdtView(asked=True, calls=calls, lookup=found.line() + others)
    if found.error is not None:
        t.wdt.error = f"{type(found.error).__name__}: {found.error}"
        return None
    raw = found.record
    if raw is None:
        return None
    t.wdt = t.wdt.model_copy(update={"found": True, **{k: str(raw.get(k) or "") for k in
                                     ("status", "order_type", "warehouse_no", "modified", "consign_time")}})
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


def _needle(sid: str | None, order_no: str | None = None) -> str:
    # Every message names its stockout so in its headers: the short `kwargsrepr` of a first publish
    # ({'stockout_id': …, 'order_no': …}) and Celery's repr of the whole stockout in a retry alike.
    return f"'stockout_id': {sid!r}" if sid is not None else f"'order_no': {order_no!r}"


def _tasks(rt: Runtime, t: Trace, scan_limit: int, order_no: str | None) -> None:
    """Messages of `t.stockout_id` (or, with `order_no`, of that order number) waiting on either
    stockout queue or delivered to a worker."""
    k, r = Keys(rt.settings.redis_prefix), rt.redis
    needle = _needle(None if order_no else t.stockout_id, order_no)
    find = r.register_script(_FIND)
    for queue in STOCKOUT_QUEUES:
        t.scanned[queue] = 0
        for key in k.queue_lists(queue):
            length = min(int(r.llen(key)), scan_limit)
            for start in range(0, length, SCAN_CHUNK):
                for entry in find(keys=[key], args=[start, min(start + SCAN_CHUNK, length) - 1, needle]):
                    t.tasks.append(_seen(json.loads(entry), f"waiting on the {queue} queue", "queued", queue))
            t.scanned[queue] += length
    delivered = 0
    for _tag, value in r.hscan_iter(k.unacked, count=500):
        delivered += 1
        if needle.encode() in value:
            message, _exchange, queue = [*json.loads(value), "", ""][:3]
            t.tasks.append(_seen(message, "delivered to a worker (unacknowledged)", "reserved", str(queue)))
    t.scanned["unacked"] = delivered
    for task in t.tasks:
        if task.task_id == t.lock_holder:
            task.state = "running (holds the lock)"
        elif task.state == "reserved" and task.eta and (eta := _eta(task.eta)) and eta > now_beijing():
            task.state = f"waiting to retry at {format_wire(eta)}"
    if t.dead_letter and t.dead_letter.task_id:
        t.tasks.append(TaskSeen(task_id=t.dead_letter.task_id, state="failed (dead-lettered)",
                                where="the dead letter", retries=max(0, t.dead_letter.attempts - 1)))


def _sid_of(tasks: list[TaskSeen], fallback: str) -> str:
    return next((task.stockout_id for task in tasks if task.stockout_id), fallback)


def _seen(message: dict, where: str, state: str, queue: str) -> TaskSeen:
    headers = message.get("headers") or {}
    label = str(headers.get("kwargsrepr") or "")
    named, sid = _ORDER_NO.search(label), _STOCKOUT_ID.search(label)
    return TaskSeen(task_id=str(headers.get("id", "")), state=state, where=where, queue=queue,
                    retries=int(headers.get("retries") or 0), eta=str(headers.get("eta") or ""),
                    order_no=named.group(1) if named else "", stockout_id=sid.group(1) if sid else "")


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
        t.bip_found_by = "id" if t.bip is not None else ""
        if t.bip is None:
            t.bip_error = f"BIP has no record {t.bip_id} (deleted in BIP?)"
    except StockoutSyncError as err:
        t.bip_error = f"{type(err).__name__}: {err}"


def _bip_by_code(rt: Runtime, t: Trace, order_no: str) -> str:
    """The stockout id of the BIP record whose code is `order_no` (when the mapping sends the order
    number as the code): how a saved stockout is found by number with WDT down or strict."""
    try:
        if not rt.mapping.document.send_code:
            return ""
        rows = [row for row in rt.bip.find_by_code(order_no) if define1_of(row)]
    except Exception as err:  # BIP down or the mapping unreadable: the rest of the trace still helps
        t.bip_error = f"looking up code {order_no} in BIP: {type(err).__name__}: {err}"
        return ""
    if rows:
        t.bip, t.bip_found_by = rows[0], "code"
        return define1_of(rows[0])
    return ""


def _bip_by_define1(rt: Runtime, t: Trace) -> None:
    """A record of this stockout in BIP with no done mark here (marks lost, or a purged letter whose
    save went through after all): BIP's list by define1, when it can be trusted."""
    try:
        rows, why = rt.bip.find_by_define1(t.stockout_id)
    except StockoutSyncError as err:
        t.bip_error = f"looking up define1 {t.stockout_id} in BIP: {type(err).__name__}: {err}"
        return
    if rows:
        t.bip, t.bip_found_by = rows[0], "define1"
    elif why:
        t.bip_error = f"cannot tell whether BIP has it: {why}"


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
    """The one-line answer, from the most telling fact down; the mark's meaning beside it."""
    running = [task for task in t.tasks if task.state.startswith(("running", "reserved", "waiting to retry"))]
    waiting = [task for task in t.tasks if task.state == "queued"]
    in_bip = bool(t.bip) and t.bip_found_by in ("code", "define1")
    if t.dead_letter:
        t.verdict = "dead-lettered"
        then = (f"`stockout-sync dlq show {t.stockout_id}`: a malformed message has nothing to requeue"
                if t.dead_letter.malformed else f"`stockout-sync dlq requeue {t.stockout_id}` once fixed")
        t.summary = (f"{t.dead_letter.last_failed_at}, after {t.dead_letter.attempts} attempt(s): "
                     f"{t.dead_letter.reason}; {then}")
    elif t.lock_holder or running:
        t.verdict = "in flight"
        who = t.lock_holder or running[0].task_id
        t.summary = f"a worker is on it: task {who}" + (f" ({running[0].state})" if running else "")
    elif t.mark == "done":
        t.verdict = "done"
        t.summary = f"saved in BIP as {t.bip_code or '?'} (id {t.bip_id or '?'})"
    elif waiting:
        t.verdict = "queued"
        t.summary = f"waiting on the {waiting[0].queue} queue" + (
            " (a backfill's: live stockouts go first)" if waiting[0].queue == BACKFILL_QUEUE else "")
    elif in_bip:
        t.verdict = "done"
        t.summary = (f"BIP has it as {(t.bip or {}).get('code') or '?'} (id {(t.bip or {}).get('id') or '?'}, found by "
                     f"{t.bip_found_by}){'; our mark says queued' if t.mark == 'queued' else ', though no mark here'}")
    elif t.mark == "queued":
        t.verdict = "queued"
        scanned = ", ".join(f"{n} {q}" for q, n in t.scanned.items())
        maybe = ("BIP may have it (" + t.bip_error + ")") if t.bip_error else "BIP's list has no record of it"
        day = (t.wdt.modified or "")[:10] or "yyyy-MM-dd"  # WDT's modified time: what reconcile's range filters on
        t.summary = (f"marked queued, but no message and no dead letter (scanned {scanned}): its letter was purged "
                     f"or its message lost, and nothing sends it again by itself; {maybe}. To send it only if BIP "
                     f"is proven not to have it: `stockout-sync reconcile --since '{day} 00:00:00' "
                     f"--until '{day} 23:59:59' --requeue-missing`")
    elif t.wdt.found and t.wdt.passes_filters is False:
        t.verdict = "filtered out"
        t.summary = f"WDT has it, the mapping's filters skip it: {t.wdt.filter_reason}"
    elif t.wdt.found and t.cursor and (modified := _time(t.wdt.modified)) and \
            (cursor := _time(t.cursor)) and modified > cursor:
        t.verdict = "not polled yet"
        t.summary = f"modified {t.wdt.modified}, after the cursor {t.cursor}: the next poll reads it"
    else:
        t.verdict = "never seen"
        if t.wdt.found:
            t.summary = "WDT has it, but nothing here knows it (older than the lookback? `stockout-sync backfill`)"
        elif t.wdt.error:
            t.summary = f"nothing here knows it, and WDT could not be asked ({t.wdt.error})"
        else:
            t.summary = f"nothing here knows it, and WDT has no such number ({t.wdt.lookup})"
    t.mark_meaning = _mark_meaning(t)


def _mark_meaning(t: Trace) -> str:
    if t.mark == "done":
        return f"done: BIP id {t.bip_id} code {t.bip_code}"
    if t.mark == "none":
        return "none"
    if t.verdict == "dead-lettered":
        return "queued mark kept while dead-lettered (a requeue sends it under the same key)"
    if t.verdict in ("queued", "in flight") and t.tasks:
        return "queued (published, not done yet)"
    return "queued, with no message on any queue"
