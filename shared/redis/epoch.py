"""The state's epoch: one record written when the Redis state is created, beat's copy of it (and of
the cursor) in a file a Redis loss does not take, and the checks that pause everything (breaker scope
`state`) when the state is gone or replaced. Why: docs/design.md, "Exactly once when memories fail"."""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import redis as redis_lib

from shared.redis import breaker
from shared.redis.keys import Keys

log = logging.getLogger("stockout_sync.state")

SCOPE = "state"


@dataclass(frozen=True)
class Epoch:
    id: str
    created: float  # epoch seconds
    inherited: bool = False  # created over a state older versions wrote (no epoch then): an upgrade
    recovered: float = 0.0  # epoch seconds of the `recover` that rebuilt this state; 0 = never

    @property
    def verify_before(self) -> float:
        """Stockouts created before this may have been saved under a key this state has no record of
        (a lost state, an older version's key): their saves first prove absence in BIP. 0 = none."""
        if self.recovered:
            return self.recovered
        return self.created if self.inherited else 0.0


def read(r: redis_lib.Redis, prefix: str) -> Epoch | None:
    return _parse(r.get(Keys(prefix).epoch))


def _parse(raw: bytes | str | None) -> Epoch | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Epoch(str(data["id"]), float(data["created"]), bool(data.get("inherited", False)),
                     float(data.get("recovered", 0.0)))
    except (ValueError, KeyError, TypeError):
        return Epoch(id=f"unreadable:{raw[:40]!r}", created=0.0)


def create(r: redis_lib.Redis, prefix: str, *, inherited: bool = False, recovered: bool = False) -> Epoch:
    """A new epoch: only where none exists, unless `recovered` (then it replaces the lost one)."""
    now = time.time()
    epoch = Epoch(uuid.uuid4().hex, now, inherited, now if recovered else 0.0)
    r.set(Keys(prefix).epoch, json.dumps(asdict(epoch)), nx=not recovered)
    return read(r, prefix) or epoch


@dataclass(frozen=True)
class Copy:
    """What beat's file remembers of the state: its epoch and the last cursor seen."""

    epoch: str
    cursor: str = ""
    recover_from: str = ""  # Beijing time an automatic recovery reads from: the lookback, running backfills


class StateCopy:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> Copy | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Copy(str(data["epoch"]), str(data.get("cursor") or ""), str(data.get("recover_from") or ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            # an unreadable copy says nothing either way; a lost state is still caught by the workers
            log.warning("state copy %s unreadable (%s): ignored", self.path, type(err).__name__)
            return None

    def save(self, copy: Copy) -> None:
        """Written whole to a temporary file and renamed: a crash never leaves half a copy."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(copy)), encoding="utf-8")
        os.replace(tmp, self.path)


def check_beat(r: redis_lib.Redis, prefix: str, copy: StateCopy | None, cursor: str, *,
               probe_interval_s: float = breaker.DEFAULT_PROBE_INTERVAL_S,
               observer: breaker.BreakerObserver | None = None, recover_from: str = "") -> str:
    """Beat's check before each poll: "" when the state is intact (the epoch created on first use,
    the copy kept up to date), else why it is not — and then the `state` scope is open."""
    epoch = read(r, prefix)
    kept = copy.load() if copy is not None else None
    problem = ""
    if breaker.is_open(r, prefix, SCOPE):
        problem = next(o.cause for o in breaker.opened(r, prefix, [SCOPE]))
    elif epoch is None and kept is not None:
        problem = (f"Redis lost its state: the epoch {kept.epoch} that beat's copy ({copy.path if copy else ''}) "
                   f"remembers is gone{f', and so is the cursor {kept.cursor}' if kept.cursor and not cursor else ''}")
    elif epoch is not None and kept is not None and epoch.id != kept.epoch and not epoch.recovered:
        problem = f"Redis holds another state: epoch {epoch.id}, where beat's copy remembers {kept.epoch}"
    elif epoch is not None and kept is not None and kept.cursor and not cursor:
        problem = f"the cursor is gone from Redis while beat's copy remembers {kept.cursor}"
    if problem:
        pause(r, prefix, problem, probe_interval_s=probe_interval_s, observer=observer)
        return problem
    if epoch is None:
        # a cursor without an epoch: a state an older version wrote (an upgrade), or one whose epoch was lost
        epoch = create(r, prefix, inherited=bool(cursor))
    if copy is not None:
        try:
            copy.save(Copy(epoch.id, cursor or (kept.cursor if kept else ""),
                           recover_from or (kept.recover_from if kept else "")))
        except OSError as err:  # polling goes on; only the detection of a lost state is weaker
            log.warning("state copy %s not written (%s): put STATE_COPY_FILE where beat may write",
                        copy.path, type(err).__name__)
    return ""


def pause(r: redis_lib.Redis, prefix: str, cause: str, *,
          probe_interval_s: float = breaker.DEFAULT_PROBE_INTERVAL_S,
          observer: breaker.BreakerObserver | None = None) -> None:
    breaker.trip(r, prefix, f"{cause}; nothing is saved until `stockout-sync recover --since …` rebuilds it",
                 SCOPE, probe_interval_s=probe_interval_s, observer=observer)


class StatePaused(Exception):
    """The state is gone, replaced or not yet created: wait (no attempt is used) until `recover`."""


class StateGuard:
    """One worker process's check before a save: the epoch it first saw is still there and the
    `state` scope is closed. Trusted for `cache_s`; no probe ever gets through (only recover closes it)."""

    def __init__(self, r: redis_lib.Redis, prefix: str, *, cache_s: float = 1.0,
                 probe_interval_s: float = breaker.DEFAULT_PROBE_INTERVAL_S,
                 observer: breaker.BreakerObserver | None = None) -> None:
        self.r, self.prefix, self.cache_s, self.probe_interval_s = r, prefix, cache_s, probe_interval_s
        self.observer = observer
        self._seen: Epoch | None = None
        self._seen_at = 0.0
        self._ok_until = 0.0

    def recheck(self) -> Epoch:
        """`check` without the cache (a claim found the state changed)."""
        self._ok_until = 0.0
        return self.check()

    def check(self) -> Epoch:
        if self._seen is not None and time.monotonic() < self._ok_until:
            return self._seen
        pipe = self.r.pipeline(transaction=False)
        pipe.get(Keys(self.prefix).epoch)
        pipe.hmget(Keys(self.prefix).breaker, [f"{SCOPE}.state", f"{SCOPE}.cause"])
        raw, (state, cause) = pipe.execute()
        if state in (b"open", b"half_open", "open", "half_open"):
            raise StatePaused(_text(cause))
        epoch = _parse(raw)
        problem = ""
        if epoch is None and self._seen is None:
            # messages before beat's first poll (published by hand, a one-off tool, an upgrade's old queue):
            # the state starts here, inherited when an older version's cursor is there
            epoch = create(self.r, self.prefix, inherited=bool(self.r.exists(Keys(self.prefix).cursor)))
            log.warning("no state epoch in Redis: created %s (beat normally does this on its first poll)", epoch.id)
        if epoch is None:
            problem = f"Redis lost its state: the epoch {self._seen.id if self._seen else ''} this worker saw is gone"
        elif self._seen is not None and epoch.id != self._seen.id and not (
                epoch.recovered and epoch.recovered >= self._seen_at):
            problem = f"Redis holds another state: epoch {epoch.id}, where this worker saw {self._seen.id}"
        if problem:
            pause(self.r, self.prefix, problem, probe_interval_s=self.probe_interval_s, observer=self.observer)
            raise StatePaused(problem)
        assert epoch is not None
        if self._seen is None or epoch.id != self._seen.id:
            self._seen, self._seen_at = epoch, time.time()
        self._ok_until = time.monotonic() + self.cache_s
        return epoch


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
