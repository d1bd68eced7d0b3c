"""This host's clock against Redis `TIME`, the one clock every process shares: measured by beat on every
poll and by workers every CHECK_S, recorded per process (`Keys.clocks`) for `status`, the metrics and
the alerts. Why: docs/design.md, "A clock that is wrong"."""
from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import Any

import redis
from pydantic import BaseModel

from shared.core import http
from shared.redis.keys import Keys

SKEW_PROBLEM_S = 60.0  # more than this is a problem in `status` and an alert
# [I] BIP refuses a token request whose timestamp is further off than this (seen at +7 min; the sandbox
# allows 600 s): a worker off by more pauses instead of dead-lettering every stockout.
BIP_TOKEN_WINDOW_S = 300.0
CHECK_S = 30.0  # a worker measures again this often
RECORD_S = 600.0  # a reading counts this long after it was taken (a stopped process's does not linger)
IDLE_POLLS = 3  # polls in a row with an empty or inverted window: a problem (a clock behind, most likely)


class Reading(BaseModel):
    who: str  # `<role>@<host>`
    skew_s: float  # this host minus Redis: positive = ahead
    at: float  # Redis time of the reading, epoch seconds
    apis: dict[str, float] = {}  # this host minus each API's HTTP `Date` at its last answer

    def problem(self) -> str | None:
        if abs(self.skew_s) <= SKEW_PROBLEM_S:
            return None
        side = "ahead of" if self.skew_s > 0 else "behind"
        # The APIs' clocks say whose clock is wrong: when they agree with Redis, it is this host's.
        said = "".join(f"; {skew:+.0f} s against {api.upper()}'s HTTP Date" for api, skew in sorted(self.apis.items()))
        return (f"the clock of {self.who} is {abs(self.skew_s):.0f} s {side} Redis TIME (more than "
                f"{SKEW_PROBLEM_S:.0f} s{said}): its polls read the wrong window and BIP refuses its token requests "
                "beyond a few minutes — fix the host's clock (NTP)")


def measure(r: redis.Redis) -> tuple[float, float]:
    """(skew in seconds, Redis time): the host's time at the middle of the round trip minus Redis's."""
    before = time.time()
    seconds, micros = r.time()
    after = time.time()
    server = seconds + micros / 1e6
    return round((before + after) / 2 - server, 3), server


def record(r: redis.Redis, prefix: str, role: str, *, keep_s: float = RECORD_S) -> Reading:
    """Measure and record this process's reading under `<role>@<host>`."""
    skew, server = measure(r)
    key, who = Keys(prefix).clocks, f"{role}@{socket.gethostname()}"
    # another process of the same role and host may have heard from an API this one has not called yet
    heard = (_record(r.hget(key, who)) or {}).get("apis")
    apis = {**(heard if isinstance(heard, dict) else {}), **http.SERVER_SKEW_S}
    reading = Reading(who=who, skew_s=skew, at=server, apis=apis)
    r.hset(key, who, json.dumps({**reading.model_dump(), "until": server + keep_s}))
    return reading


def readings(r: redis.Redis, prefix: str) -> list[Reading]:
    """The readings that still count (stale ones are removed), the largest skew first."""
    seconds, _ = r.time()
    return current(prune(r, prefix, seconds), seconds)


def prune(r: redis.Redis, prefix: str, now: float | None = None) -> dict[Any, Any]:
    """Remove the readings of processes that stopped reporting (beat does, every alert round); what is left."""
    key = Keys(prefix).clocks
    now = float(r.time()[0]) if now is None else now
    held = r.hgetall(key)
    stale = [who for who, raw in held.items() if _current(raw, now) is None]
    if stale:
        r.hdel(key, *stale)
    return {who: raw for who, raw in held.items() if who not in stale}


def current(held: dict[Any, Any], now: float) -> list[Reading]:
    """The readings of the clocks hash as read that still count at Redis time `now`, the largest skew first."""
    found = [reading for who, raw in held.items() if (reading := _current(raw, now, _text(who))) is not None]
    return sorted(found, key=lambda reading: -abs(reading.skew_s))


def _current(raw: Any, now: float, who: str = "") -> Reading | None:
    value = _record(raw)
    if value is None or float(value.get("until", 0)) < now:
        return None
    apis = value.get("apis")
    apis = apis if isinstance(apis, dict) else {}
    return Reading(who=who, skew_s=float(value.get("skew_s", 0)), at=float(value.get("at", 0)),
                   apis={str(k): float(v) for k, v in apis.items()})


class ClockWatch:
    """One process's view: measured (and recorded) at most every CHECK_S; `off_by` is the last skew."""

    def __init__(self, r: redis.Redis, prefix: str, role: str) -> None:
        self.r, self.prefix, self.role = r, prefix, role
        self._next = 0.0
        self.last: Reading | None = None

    def off_by(self) -> float:
        if time.monotonic() >= self._next:
            with contextlib.suppress(redis.RedisError):  # the stockout's own Redis calls will say so
                self.last = record(self.r, self.prefix, self.role)
            self._next = time.monotonic() + CHECK_S
        return self.last.skew_s if self.last else 0.0

    def beyond_token_window(self) -> str | None:
        """Why this process must not call BIP now (its clock), or None."""
        skew = self.off_by()
        if abs(skew) <= BIP_TOKEN_WINDOW_S:
            return None
        side = "ahead of" if skew > 0 else "behind"
        return (f"this host's clock is {abs(skew):.0f} s {side} Redis TIME, beyond BIP's token window "
                f"({BIP_TOKEN_WINDOW_S:.0f} s): BIP would refuse every token request — fix the clock (NTP)")


def idle_problem(last_poll: dict | None) -> str | None:
    """The last polls read no new slice of WDT at all: their window was empty or inverted."""
    try:
        idle = int((last_poll or {}).get("idle_polls") or 0)
    except (TypeError, ValueError):
        return None
    if idle < IDLE_POLLS:
        return None
    return (f"the last {idle} polls read nothing new from WDT: their window [cursor + 1 s, now − SETTLE_S] was "
            "empty or inverted — is the beat host's clock behind, or the cursor in the future?")


def _record(raw: Any) -> dict | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
