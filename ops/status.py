"""`stockout-sync status`: what an operator on call needs to know, read from Redis and the workers in
cheap reads only; `problems` non-empty means exit 1 (docs/design.md, "Status")."""
from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

from producer.alerts.watch import told
from producer.backfill.jobs import Job, JobStore, eta_s
from producer.reconcile.reports import last_report
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.mapping.cache import MappingProblem
from shared.observe import clock
from shared.observe.snapshot import HEARTBEAT_ALIVE_INTERVALS, Snapshot
from shared.queue.depth import backlog
from shared.queue.nodes import Node, nodes
from shared.redis import epoch
from shared.redis.durability import Durability
from shared.redis.durability import inspect as inspect_redis
from shared.redis.keys import PRODUCER_QUEUE, STOCKOUT_QUEUE, Keys
from shared.redis.ratelimit import RateLimiter
from shared.redis.stats import saved as saved_count
from shared.runtime import Runtime

Role = Literal["worker", "beat"]


class DeadLetterGroup(BaseModel):
    reason: str
    count: int
    example: str


class TokenState(BaseModel):
    cached: bool
    expires_at: str | None = None  # Beijing time BIP's token expires
    expires_in_s: float | None = None
    renew_in_s: float | None = None  # the shared copy is renewed this long before expiry


class LimiterState(BaseModel):
    name: str
    rate_per_s: float  # the shared rate now (adaptive: at most the ceiling)
    ceiling_per_s: float = 0.0  # the configured rate
    refusals: int = 0  # refusals by the API that lowered the rate so far
    since_refusal_s: float | None = None
    booked_ahead_s: float  # slots already promised to waiting callers
    next_slot_in_s: float  # how long a call made now would wait
    free_now: bool


class BreakerState(BaseModel):
    """The circuit breaker (`Keys.breaker`): open while a configuration error pauses work."""

    state: str = "closed"  # closed | open | half_open
    cause: str = ""
    api: str = ""
    since: str = ""  # ISO time, UTC
    scopes: list[dict[str, str]] = Field(default_factory=list)  # every open scope: api, state, cause, since


class BackfillView(BaseModel):
    """A backfill job as `status` and `backfill show` print it."""

    job: Job
    progress: float
    eta_s: float | None = None


class Status(BaseModel):
    now: str
    cursor: str | None = None
    lag_s: float | None = None
    max_lag_s: int
    last_poll: dict | None = None
    last_poll_age_s: float | None = None
    queues: dict[str, int] = Field(default_factory=dict)
    in_flight: int = 0
    synced: int = 0
    dead_letters: int = 0
    dead_letters_by_reason: list[DeadLetterGroup] = Field(default_factory=list)
    bip_token: TokenState
    rate_limits: list[LimiterState] = Field(default_factory=list)
    breaker: BreakerState = Field(default_factory=BreakerState)
    workers: list[Node] | None = None  # None: the broadcast itself failed
    backlog: int = 0  # stockout messages in Redis (both queues + unacked): what backpressure goes by
    high_water: int = 0
    backfills: list[BackfillView] = Field(default_factory=list)  # jobs not finished
    last_reconcile: dict | None = None  # the newest daily reconcile report (producer.reconcile.reports)
    mapping_problem: MappingProblem | None = None  # the file does not validate; the last good one is used
    redis: Durability | None = None  # maxmemory-policy and persistence, as the server tells them
    clocks: list[clock.Reading] = Field(default_factory=list)  # each process's clock against Redis TIME
    alerts_told: list[dict[str, Any]] = Field(default_factory=list)  # producer.alerts.watch.told: what, when, firing
    beat_heartbeat_age_s: float | None = None  # since beat's last poll ran (producer/heartbeat.py); None: never
    beat_alive: bool = False  # a poll within two POLL_INTERVAL_S
    poll_interval_s: float = 0.0
    state_epoch: str = ""  # the epoch of the Redis state (shared/redis/epoch.py); empty = none
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # worth knowing, not worth exit 1


def gather(rt: Runtime, *, timeout_s: float = 1.0) -> Status:
    s, r, p = rt.settings, rt.redis, rt.settings.redis_prefix
    snap = Snapshot.read(r, p)  # what the gauges and beat's alerts judge from too
    now = now_beijing()
    status = Status(now=format_wire(now), max_lag_s=s.status_max_lag_s, bip_token=token_state(r, p))
    _cursor(status, snap)
    status.queues = dict(snap.queues)
    status.in_flight = snap.unacked
    status.backlog, status.high_water = snap.backlog, s.high_water
    status.backfills = [v for v in backfill_views(rt) if not v.job.finished]
    status.synced = snap.synced
    _dead_letters(status, rt)
    status.rate_limits = limiter_states(rt)
    status.breaker = breaker_state(snap)
    status.last_reconcile = last_report(r, p)
    status.mapping_problem = snap.mapping_problem
    status.alerts_told = told(r, p)[:10]
    status.workers = nodes(timeout_s)
    _beat(status, snap, rt.settings.poll_interval_s)
    status.state_epoch = snap.epoch
    status.problems = problems(status)
    _redis_durability(status, rt)
    _clocks(status, snap, rt)
    return status


def _clocks(status: Status, snap: Snapshot, rt: Runtime) -> None:
    """Every worker's and beat's last clock reading, and this host's own (status may run elsewhere); a
    skew over a minute, or polls that keep reading an empty window, is a problem."""
    skew, at = clock.measure(rt.redis)
    own = clock.Reading(who=f"status@{socket.gethostname()}", skew_s=skew, at=at)
    status.clocks = [*snap.clocks, own]
    status.problems += [p for p in (own.problem(),) if p] + snap.clock_problems()


def _redis_durability(status: Status, rt: Runtime) -> None:
    """An evicting Redis is a problem (unless REDIS_ALLOW_EVICTION), no persistence a warning."""
    status.redis = inspect_redis(rt.redis)
    allowed = rt.settings.redis_allow_eviction
    problem = status.redis.eviction_problem(allowed=allowed)
    status.problems += [problem] if problem else []
    status.warnings += status.redis.warnings(allowed=allowed)


def _beat(status: Status, snap: Snapshot, poll_interval_s: float) -> None:
    status.beat_heartbeat_age_s = _round(snap.beat_age_s)
    status.beat_alive = snap.beat_alive(poll_interval_s)
    status.poll_interval_s = poll_interval_s


def backfill_views(rt: Runtime, jobs: list[Job] | None = None) -> list[BackfillView]:
    """Jobs with their progress and ETA (from the drain rate measured since each one began)."""
    r, p = rt.redis, rt.settings.redis_prefix
    jobs = JobStore(r, p).all() if jobs is None else jobs
    synced, waiting = saved_count(r, p), backlog(r, p)
    now = time.time()
    return [
        BackfillView(job=j, progress=round(j.progress(), 4),
                     eta_s=_round(eta_s(j, synced_now=synced, waiting=waiting, now_epoch=now)))
        for j in jobs
    ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _cursor(status: Status, snap: Snapshot) -> None:
    if snap.cursor is not None:
        status.cursor = format_wire(snap.cursor)
        status.lag_s = _round(snap.lag_s)
    status.last_poll = snap.last_poll
    started = snap.poll_started_at
    if started is not None:
        status.last_poll_age_s = round(snap.at - started, 1)


def _dead_letters(status: Status, rt: Runtime) -> None:

    letters = list(DeadLetterStore(rt.redis, rt.settings.redis_prefix).summaries())
    status.dead_letters = len(letters)
    status.dead_letters_by_reason = dead_letter_groups(letters)


def dead_letter_groups(letters: Iterable[DeadLetter]) -> list[DeadLetterGroup]:
    """The letters by kind of failure (DeadLetter.group), largest group first, each with an example."""
    groups: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for letter in letters:
        key = letter.group  # what to fix (shared.deadletters.model.fix_key), with how many letters it mends
        groups[key] += 1
        examples.setdefault(key, f"{letter.stockout_id} ({letter.order_no or '?'}): {letter.message}"[:200])
    return [DeadLetterGroup(reason=k, count=n, example=examples[k]) for k, n in groups.most_common()]


def token_state(r: redis.Redis, prefix: str) -> TokenState:
    # the layout TokenProvider writes: JSON with expires_at (epoch s), TTL = its renewal time
    pipe = r.pipeline(transaction=False)
    pipe.get(Keys(prefix).bip_token)
    pipe.pttl(Keys(prefix).bip_token)
    raw, pttl = pipe.execute()
    if not raw:
        return TokenState(cached=False)
    try:
        expires_at = float(json.loads(raw)["expires_at"])
    except (ValueError, KeyError, TypeError):
        return TokenState(cached=True)
    now = now_beijing()
    expiry = datetime.fromtimestamp(expires_at, now.tzinfo)
    return TokenState(
        cached=True,
        expires_at=format_wire(expiry),
        expires_in_s=round((expiry - now).total_seconds(), 1),
        renew_in_s=round(pttl / 1000, 1) if pttl and pttl > 0 else None,
    )


def limiter_states(rt: Runtime) -> list[LimiterState]:
    s, r = rt.settings, rt.redis
    limiters = [
        RateLimiter(r, "wdt", s.wdt_rate_per_minute / 60.0, prefix=s.redis_prefix),
        RateLimiter(r, "bip", s.bip_rate_per_second, prefix=s.redis_prefix),
    ]
    rows = []
    for limiter in limiters:
        state = limiter.state()  # one read-only script: the adaptive rate and what is booked
        interval = 1 / state.rate_per_s
        wait = max(0.0, state.booked_ahead_s + interval - interval * limiter.burst)
        rows.append(LimiterState(
            name=limiter.name,
            rate_per_s=round(state.rate_per_s, 4),
            ceiling_per_s=round(state.ceiling_per_s, 4),
            refusals=state.epoch,
            since_refusal_s=None if state.since_refusal_s is None else round(state.since_refusal_s, 1),
            booked_ahead_s=round(state.booked_ahead_s, 3),
            next_slot_in_s=round(wait, 3),
            free_now=wait == 0,
        ))
    return rows


def breaker_state(snap: Snapshot) -> BreakerState:
    found = snap.paused()
    if not found:
        return BreakerState()
    first = found[0]
    return BreakerState(state=first.state, cause=first.cause, api=first.api, since=first.since,
                        scopes=[{"api": o.api, "state": o.state, "cause": o.cause, "since": o.since} for o in found])


def problems(status: Status) -> list[str]:
    found = []
    if status.workers is None:
        found.append("the workers could not be asked (broker unreachable?)")
    else:
        if not any(STOCKOUT_QUEUE in w.queues for w in status.workers):
            found.append(f"no worker is consuming the {STOCKOUT_QUEUE} queue")
        if not any(PRODUCER_QUEUE in w.queues for w in status.workers):
            found.append(f"no beat/producer is consuming the {PRODUCER_QUEUE} queue: nothing polls WDT")
    if status.beat_heartbeat_age_s is not None and not status.beat_alive:
        found.append(f"beat's last poll ran {status.beat_heartbeat_age_s:.0f} s ago (more than "
                     f"{HEARTBEAT_ALIVE_INTERVALS} × POLL_INTERVAL_S={status.poll_interval_s:g}): no live beat, "
                     "so nothing polls and backfill jobs wait")
    if status.lag_s is None:
        found.append("no poll has completed yet: the cursor is not set")
    elif status.lag_s > status.max_lag_s:
        found.append(f"the cursor lags {status.lag_s:.0f} s behind now (more than STATUS_MAX_LAG_S={status.max_lag_s})")
    if status.dead_letters:
        found.append(f"{status.dead_letters} dead letter(s): see `stockout-sync dlq list`")
    if status.mapping_problem is not None:
        found.append(status.mapping_problem.line())
    if not status.state_epoch:
        found.append("the state has no epoch: Redis lost its state, or beat has not polled yet")
    for scope in status.breaker.scopes:
        then = ("" if scope["api"] == epoch.SCOPE else
                " — fix it and restart, or work resumes when a probe succeeds")
        found.append(f"paused since {scope['since']} (circuit breaker {scope['state']} for {scope['api']}): "
                     f"{scope['cause']}{then}")
    return found


# -- health checks of one container ------------------------------------------------------------
def health(rt: Runtime, role: Role, *, timeout_s: float = 2.0, hostname: str | None = None) -> list[str]:
    """Problems of the worker or beat process on this host only, for a container's health check:
    dead letters or another machine's trouble must not mark this process unhealthy."""
    hostname = hostname or socket.gethostname()
    queue = STOCKOUT_QUEUE if role == "worker" else PRODUCER_QUEUE
    found = []
    def ours(node: Node) -> bool:
        return node.hostname.endswith(f"@{hostname}") and queue in node.queues

    answered = nodes(timeout_s, until=ours)  # healthy as soon as this host's process answers
    if answered is None:
        found.append("the broker could not be reached")
    elif not any(ours(n) for n in answered):
        found.append(f"no process on {hostname} is consuming the {queue} queue")
    if role == "beat":
        now = now_beijing()
        cursor = rt.store.cursor()
        if cursor is not None and (now - cursor).total_seconds() > rt.settings.status_max_lag_s:
            found.append(f"the cursor lags {(now - cursor).total_seconds():.0f} s behind now")
    return found
