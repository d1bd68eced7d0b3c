"""What to tell operators, found by the beat process: new dead letters, the circuit breaker, cursor lag,
no worker, an invalid mapping file, a reconcile mismatch. One beat sends at a time (a Redis lock); a
thread of its own does it, so a dead robot never delays a poll. The reasoning: docs/alerts.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from producer.alerts.channels import Alert, Reply, Sender, channels_from_settings, sender_from_settings
from shared.core.settings import Settings
from shared.core.timeutil import BEIJING, format_wire
from shared.deadletters.model import DeadLetter
from shared.observe import clock
from shared.observe.snapshot import Snapshot
from shared.queue.nodes import consumed_queues
from shared.redis.conn import redis_client
from shared.redis.keys import STOCKOUT_QUEUE, Keys
from shared.redis.lock import OwnedLock

log = logging.getLogger("stockout_sync.alerts")

EXAMPLES = 5  # order numbers and reasons shown per dead-letter message
MAX_DEAD_LETTER_MESSAGES = 10  # per round: the robots take ~20 a minute; the rest wait, counted
NEW_LETTERS_PER_ROUND = 10_000  # read at most this many new letters a round; the rest next round
# The group of the letters that were waiting when this Redis first saw alerts on (Watch._baseline).
ALREADY_WAITING = "already waiting when alerts started"
# A rolling restart leaves no worker for a few seconds: only an absence seen this long is told.
NO_WORKER_GRACE_S = 60.0


Workers = Callable[[], "list[str] | None"]  # queues some worker consumes; None = could not ask


@dataclass
class Watch:
    """One round: look at Redis, decide, send. Plain methods, so tests drive it round by round."""

    r: redis.Redis
    settings: Settings
    sender: Sender
    workers: Workers
    # asked before each message: False when this process no longer holds the alerts lock
    may_send: Callable[[], bool] = lambda: True
    keys: Keys = field(init=False)
    _round_snap: Snapshot | None = field(default=None, init=False)  # the one read of a round
    sent: list[tuple[Alert, list[Reply]]] = field(default_factory=list)
    _unreachable: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.keys = Keys(self.settings.redis_prefix)

    def round(self, now: float | None = None) -> list[Alert]:
        now = time.time() if now is None else now
        self._unreachable = False
        alerts: list[Alert] = []
        try:  # one read of the pipeline's health for the round: what `status` and the gauges judge from
            self._round_snap = Snapshot.read(self.r, self.settings.redis_prefix)
        except redis.RedisError as err:
            log.warning("alerts: the pipeline's state could not be read (%s)", type(err).__name__)
            return alerts
        try:
            for step in (self.dead_letters, self.breaker, self.cursor_lag, self.no_worker, self.mapping_file,
                         self.reconcile, self.clock):
                try:
                    alerts += step(now)
                except (redis.RedisError, ValueError, TypeError, KeyError) as err:
                    log.warning("alerts: %s could not be checked (%s)", step.__name__, type(err).__name__)
        finally:
            self._round_snap = None
        return alerts

    @property
    def snap(self) -> Snapshot:
        """The round's snapshot; a step run on its own reads one of its own."""
        return self._round_snap or Snapshot.read(self.r, self.settings.redis_prefix)

    def _send(self, alert: Alert) -> bool:
        # Once every channel failed in this round, the rest of the round would only wait out the same
        # budgets (and outlive the lock): what is due stays due for the next round.
        if self._unreachable or not self.may_send():
            return False
        alert.prefix = self.settings.redis_prefix
        replies = self.sender.send(alert)
        self.sent.append((alert, replies))
        # Told when one channel took it; a channel that failed was retried and logged. When all of
        # them failed the alert stays due and is tried again next round.
        told = any(reply.ok for reply in replies)
        self._unreachable = not told
        return told

    # -- dead letters: batched per reason ---------------------------------------------------------
    def dead_letters(self, now: float) -> list[Alert]:
        k = self.keys
        told_up_to = self.r.get(k.alerts_dlq_cursor)
        if told_up_to is None:
            self._baseline()
        cursor = float(_text(told_up_to) or 0)
        new: list[tuple[Any, float]] = [] if told_up_to is None else list(self.r.zrangebyscore(  # type: ignore[arg-type]
            k.dlq_index, f"({cursor}", "+inf", start=0, num=NEW_LETTERS_PER_ROUND, withscores=True))
        if new:
            self._collect([(_text(member), score) for member, score in new])
            self.r.set(k.alerts_dlq_cursor, repr(max(score for _, score in new)))
        pending = {_text(key): json.loads(value) for key, value in self.r.hgetall(k.alerts_dlq_pending).items()}
        last_sent = {_text(key): float(value) for key, value in self.r.hgetall(k.alerts_dlq_sent).items()}
        due = [reason for reason in sorted(pending, key=lambda r: -pending[r]["count"])
               if now - last_sent.get(reason, 0.0) >= self.settings.alert_interval_s]
        told = []
        for reason in due[:MAX_DEAD_LETTER_MESSAGES]:
            group = pending[reason]
            alert = dead_letter_alert(reason, group, total=int(self.r.zcard(k.dlq_index)))
            if self._send(alert):
                pipe = self.r.pipeline(transaction=True)
                pipe.hdel(k.alerts_dlq_pending, reason)
                pipe.hset(k.alerts_dlq_sent, reason, repr(now))
                pipe.execute()
                told.append(alert)
        return told

    def _baseline(self) -> None:
        """The first round on this Redis (no dead letter told yet): the letters already waiting are not
        news, but they are not skipped either — one message counts them, and from here on every letter
        indexed after the newest of them is new, whenever it came (beat down or alerts not yet on)."""
        k = self.keys
        newest: list[tuple[Any, float]] = list(self.r.zrange(k.dlq_index, -1, -1, withscores=True))  # type: ignore[arg-type]
        if newest:
            oldest: list[tuple[Any, float]] = list(self.r.zrange(  # type: ignore[arg-type]
                k.dlq_index, 0, EXAMPLES - 1, withscores=True))
            self._collect([(_text(member), float(score)) for member, score in oldest], reason=ALREADY_WAITING,
                          count=int(self.r.zcard(k.dlq_index)))
        self.r.set(k.alerts_dlq_cursor, repr(float(newest[0][1])) if newest else "0")

    def _collect(self, ids: list[tuple[str, float]], *, reason: str = "", count: int = 0) -> None:
        """Add new letters to their reason's pending group (count, the first examples, since the oldest's
        failure); `reason` puts them all in that one group, counted `count`."""
        k = self.keys
        groups: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            values = self.r.mget([k.dlq_record(i) for i, _ in chunk])
            for (sid, score), value in zip(chunk, values, strict=True):
                letter = _letter(value)
                group_reason = reason or (reason_key(letter) if letter else "unknown: the record is gone or unreadable")
                group = groups.setdefault(group_reason, {"count": 0, "examples": [], "since": score})
                group["since"] = min(group["since"], score)
                group["count"] += 1
                if len(group["examples"]) < EXAMPLES:
                    group["examples"].append({
                        "stockout_id": sid,
                        "order_no": letter.order_no if letter else "",
                        "reason": (letter.message if letter else "")[:300],
                    })
        if reason and reason in groups:
            groups[reason]["count"] = count
        pipe = self.r.pipeline(transaction=True)
        previous = self.r.hmget(k.alerts_dlq_pending, list(groups)) if groups else []
        for (name, group), before in zip(groups.items(), previous, strict=True):
            since = format_wire(datetime.fromtimestamp(group["since"], BEIJING))
            merged = json.loads(before) if before else {"count": 0, "examples": [], "since": since}
            merged["count"] += group["count"]
            merged["examples"] = (merged["examples"] + group["examples"])[:EXAMPLES]
            pipe.hset(k.alerts_dlq_pending, name, json.dumps(merged, ensure_ascii=False))
        pipe.execute()

    # -- the circuit breaker: told when it opens and when it closes ------------------------------
    def breaker(self, now: float) -> list[Alert]:
        k = self.keys
        raw = self.snap.breaker
        state = raw.get("state", "closed") or "closed"
        if state not in ("closed", "open", "half_open"):
            return []
        seen = _text(self.r.get(k.alerts_breaker)) or "closed"
        # half-open is the breaker trying again: neither news nor all clear
        if state == "half_open" or (state == "open") == (seen == "open"):
            if state != "half_open" and state != seen:
                self.r.set(k.alerts_breaker, state)
            return []
        alert = breaker_alert(state, raw)
        if self._send(alert):
            self.r.set(k.alerts_breaker, state)
            return [alert]
        return []

    # -- conditions that hold for a while: told when they start, every interval, and when they end --
    def _condition(self, name: str, active: bool, now: float, make: Callable[[Any], Alert],
                   grace_s: float = 0.0) -> list[Alert]:
        k = self.keys
        raw = self.r.hget(k.alerts_conditions, name)
        state: dict[str, Any] = json.loads(raw) if raw else {"since": None, "sent": 0.0, "firing": False}
        alert: Alert | None = None
        if active:
            state["since"] = state["since"] or now
            due = now - state["since"] >= grace_s and now - state["sent"] >= self.settings.alert_interval_s
            if due:
                alert = make("firing")
        else:
            if state["firing"]:
                alert = make("resolved")
            state["since"] = None
        if alert is not None:
            if not self._send(alert):
                self.r.hset(k.alerts_conditions, name, json.dumps(state))
                return []
            state["sent"] = now if alert.status == "firing" else 0.0
            state["firing"] = alert.status == "firing"
        self.r.hset(k.alerts_conditions, name, json.dumps(state))
        return [alert] if alert is not None else []

    def cursor_lag(self, now: float) -> list[Alert]:
        cursor, lag = self.snap.cursor, self.snap.lag_at(now)
        if cursor is None or lag is None:
            return []  # no poll has finished yet: `status` says so; nothing has fallen behind
        limit = self.settings.status_max_lag_s
        return self._condition("cursor_lag", self.snap.lagging(limit, now), now, lambda status: Alert(
            kind="cursor_lag", status=status, severity="warning",
            title=(f"the cursor lags {lag / 60:.0f} min behind now" if status == "firing"
                   else "the cursor caught up"),
            lines=[f"cursor {format_wire(cursor)}, lag {lag:.0f} s (STATUS_MAX_LAG_S={limit})",
                   "polls are failing or falling behind: see `stockout-sync status` and the beat's log"
                   if status == "firing" else "polls keep up again"],
            details={"lag_s": round(lag, 1), "max_lag_s": limit, "cursor": format_wire(cursor)},
        ))

    def clock(self, now: float) -> list[Alert]:
        """A process's clock over a minute off Redis TIME, or polls that keep reading an empty window."""
        clock.prune(self.r, self.settings.redis_prefix)  # processes that stopped reporting leave no reading
        found = self.snap.clock_problems()
        return self._condition("clock", bool(found), now, lambda status: Alert(
            kind="clock", status=status, severity="critical",
            title="a clock is wrong: polls or saves are off" if status == "firing" else "the clocks agree again",
            lines=found if status == "firing" else ["every worker and beat is within a minute of Redis TIME"],
            details={"problems": found},
        ))

    def no_worker(self, now: float) -> list[Alert]:
        queues = self.workers()
        if queues is None:
            return []  # the broadcast failed: cannot tell, so say nothing rather than cry wolf
        missing = STOCKOUT_QUEUE not in queues
        return self._condition("no_worker", missing, now, lambda status: Alert(
            kind="no_worker", status=status, severity="critical",
            title=f"no worker is consuming the {STOCKOUT_QUEUE} queue" if status == "firing"
            else f"a worker consumes the {STOCKOUT_QUEUE} queue again",
            lines=["stockouts are queued but nothing saves them to BIP" if status == "firing" else "saving resumed"],
            details={"queue": STOCKOUT_QUEUE},
        ), grace_s=NO_WORKER_GRACE_S)

    def mapping_file(self, now: float) -> list[Alert]:
        problem = self.snap.mapping_problem

        def make(status: str) -> Alert:
            if status == "firing" and problem is not None:
                return Alert(kind="mapping_invalid", status=status, severity="critical",
                             title="the mapping file does not validate",
                             lines=[problem.line(), "stockouts the last good mapping cannot express wait "
                                    "(retried every 5 s): fix the file, see `stockout-sync status`"],
                             details=problem.model_dump())
            return Alert(kind="mapping_invalid", status="resolved", severity="info",
                         title="the mapping file validates again", lines=["stockouts that waited for it go on"])

        return self._condition("mapping_invalid", problem is not None, now, make)

    # -- reconcile reports --------------------------------------------------------------------------
    def reconcile(self, now: float) -> list[Alert]:
        k = self.keys
        seen = _text(self.r.get(k.alerts_reconcile))
        reports = []
        for value in self.r.lrange(k.reconcile_reports, 0, 9):  # newest first
            report = _json_object(value)
            if report is None:
                continue
            if report_id(report) == seen:
                break
            reports.append(report)
        if not reports:
            return []
        told: list[Alert] = []
        for report in reversed(reports):  # oldest first
            if int(report.get("mismatches") or 0) > 0:
                alert = reconcile_alert(report)
                if not self._send(alert):
                    return told  # this one and the newer ones next round
                told.append(alert)
            self.r.set(k.alerts_reconcile, report_id(report))
        return told


# -- rendering -----------------------------------------------------------------------------------
def reason_key(letter: DeadLetter) -> str:
    """The kind of failure, not its particular value: one message per thing to fix (as `status` groups)."""
    code = f" [{letter.api} {letter.code}]" if letter.code else ""
    return f"{letter.stage}: {letter.error_class}{code}"


def told(r: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """What the alerts last told, newest first: each dead-letter reason and each condition (cursor lag,
    no worker…) with the Beijing time of its last message, and whether the condition still fires."""
    k = Keys(prefix)
    found: list[tuple[float, dict[str, Any]]] = []
    for reason, at in r.hgetall(k.alerts_dlq_sent).items():
        found.append((float(at), {"what": f"dead letters: {_text(reason)}", "firing": False}))
    for name, raw in r.hgetall(k.alerts_conditions).items():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            state = json.loads(raw)
            if state.get("sent"):
                found.append((float(state["sent"]), {"what": _text(name), "firing": bool(state.get("firing"))}))
    found.sort(key=lambda pair: pair[0], reverse=True)
    return [{**item, "at": format_wire(datetime.fromtimestamp(at, BEIJING))} for at, item in found]


def dead_letter_alert(reason: str, group: dict, *, total: int) -> Alert:
    count = int(group["count"])
    lines = [f"{count} dead letter(s) were waiting when alerts started, the oldest from {group.get('since', '?')}"
             if reason == ALREADY_WAITING else f"{count} new dead letter(s) since {group.get('since', '?')}: {reason}"]
    for ex in group["examples"]:
        lines.append(f"{ex.get('order_no') or '?'} (stockout {ex.get('stockout_id')}): {ex.get('reason', '')[:160]}")
    if count > len(group["examples"]):
        lines.append(f"… and {count - len(group['examples'])} more")
    lines.append(f"{total} dead letter(s) in all: `stockout-sync dlq list`")
    return Alert(kind="dead_letters", severity="critical", title=f"{count} dead letter(s): {reason}"[:200], lines=lines,
                 details={"reason": reason, "count": count, "examples": group["examples"], "total": total,
                          "since": group.get("since", "")})


def breaker_alert(state: str, raw: dict[str, str]) -> Alert:
    api, cause, since = raw.get("api", ""), raw.get("cause", ""), raw.get("since", "")
    if state == "open":
        return Alert(kind="breaker", status="firing", severity="critical",
                     title=f"circuit breaker open{f' ({api})' if api else ''}: the pipeline is paused",
                     lines=[f"cause: {cause or 'not given'}", f"since {since or '?'}",
                            "nothing is lost: stockouts wait and no attempt is used; fix the cause"],
                     details={"state": state, "api": api, "cause": cause, "since": since})
    return Alert(kind="breaker", status="resolved", severity="info",
                 title=f"circuit breaker closed{f' ({api})' if api else ''}: the pipeline runs again",
                 lines=[f"closed since {since or '?'}"],
                 details={"state": state, "api": api, "cause": cause, "since": since})


def reconcile_alert(report: dict) -> Alert:
    lines = [f"{report.get('since', '?')} → {report.get('until', '?')}: {report.get('mismatches')} mismatch(es)"]
    details: dict[str, Any] = {key: report.get(key) for key in ("since", "until", "mismatches", "finished_at")}
    for key in ("missing", "duplicated", "changed"):
        items = report.get(key) or []
        if not isinstance(items, list):
            items = []
        details[key] = items[:EXAMPLES]
        if items:
            total = int(report.get(f"{key}_total") or len(items))  # stored lists are capped; the count is not
            shown = ", ".join(_item(i) for i in items[:EXAMPLES])
            lines.append(f"{key} ({total}): {shown}{' …' if total > EXAMPLES else ''}")
    lines.append("`stockout-sync reconcile` again for the whole list")
    return Alert(kind="reconcile_mismatch", severity="warning",
                 title=f"reconcile found {report.get('mismatches')} mismatch(es) between WDT and BIP",
                 lines=lines, details=details)


def probe_alert() -> Alert:
    return Alert(kind="test", severity="info", title="test message: this channel works",
                 lines=["sent by `stockout-sync alert test`"])


def report_id(report: dict) -> str:
    blob = json.dumps([report.get("since"), report.get("until"), report.get("finished_at")], default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _item(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("order_no") or value.get("stockout_id") or value)[:60]
    return str(value)[:60]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def _json_object(value: Any) -> dict | None:
    try:
        data = json.loads(value) if value else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _letter(value: Any) -> DeadLetter | None:
    try:
        return DeadLetter.model_validate_json(value) if value else None
    except ValueError:
        return None


# -- the sender thread of the beat process ------------------------------------------------------------
class AlertLoop(threading.Thread):
    """Rounds every ALERT_CHECK_INTERVAL_S while this process holds the alerts lock."""

    def __init__(self, r: redis.Redis, settings: Settings, *, workers: Workers = consumed_queues) -> None:
        super().__init__(name="alerts", daemon=True)
        self.watch = Watch(r, settings, sender_from_settings(settings), workers, may_send=self.holds_lock)
        self.interval_s = settings.alert_check_interval_s
        # Renewed before every message, so it is held through one message's budget and the wait after
        # a round; a beat that died frees it within that span, and another beat takes over.
        self.lock_ms = int((settings.alert_send_budget_s * 2 + self.interval_s * 2) * 1000)
        self.token = uuid.uuid4().hex
        self._lock = OwnedLock(r, self.watch.keys.alerts_lock)
        self._stop = threading.Event()

    def holds_lock(self) -> bool:
        return self._lock.renew(self.token, self.lock_ms / 1000, or_take=True)

    def run(self) -> None:
        log.info("alerts: checking every %.0f s, sending to %s", self.interval_s,
                 ", ".join(c.name for c in self.watch.sender.channels))
        while not self._stop.is_set():
            try:
                if self.holds_lock():
                    self.watch.round()
                    # keep `sent` from growing in a process that runs for months
                    del self.watch.sent[:]
            except Exception as err:  # the loop outlives a Redis restart or a bug in one round
                log.warning("alerts: round failed (%s)", type(err).__name__)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self.watch.sender.stop()
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            self._lock.release(self.token)


def install(settings: Settings) -> None:
    """Run the alert loop in this (beat) process once its worker is up; stop it with the worker."""
    if not channels_from_settings(settings):
        log.info("alerts off: no channel configured (ALERT_WEBHOOK_URL, ALERT_DINGTALK_URL, ALERT_WECOM_URL, "
                 "ALERT_FEISHU_URL)")
        return
    loops: list[AlertLoop] = []

    @worker_ready.connect(weak=False)
    def _start(**_kwargs: Any) -> None:
        # in the worker's main process, after the pool forked: the thread lives beside the consumer,
        # never in the pool process that runs the polls
        loop = AlertLoop(redis_client(settings), settings)
        loop.start()
        loops.append(loop)

    @worker_shutdown.connect(weak=False)
    def _stop(**_kwargs: Any) -> None:
        for loop in loops:
            loop.stop()
