"""The pipeline's health as Redis holds it, read in one round trip: `Snapshot.read`. `status`, the
scrape-time gauges and beat's alerts all judge from one, with the same predicates, so they cannot
disagree (docs/design.md, "One health snapshot")."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import redis
from pydantic import BaseModel, Field

from shared.core.timeutil import BEIJING, parse_wire
from shared.mapping.cache import MappingProblem
from shared.observe import clock
from shared.queue.depth import STOCKOUT_QUEUES, ask_lengths, lengths_of
from shared.redis import breaker
from shared.redis.breaker import Opened
from shared.redis.keys import BACKFILL_QUEUE, DEAD_LETTER_QUEUE, PRODUCER_QUEUE, STOCKOUT_QUEUE, Keys

QUEUES = (STOCKOUT_QUEUE, BACKFILL_QUEUE, DEAD_LETTER_QUEUE, PRODUCER_QUEUE)
HEARTBEAT_ALIVE_INTERVALS = 2  # a beat that missed two polls in a row is not scheduling any


class Snapshot(BaseModel):
    """What each reader needs, as read; the judgements are methods, defined once."""

    at: float  # Redis TIME (epoch seconds): one clock for every age below, whoever reads
    queues: dict[str, int] = Field(default_factory=dict)
    unacked: int = 0
    cursor: datetime | None = None
    last_poll: dict[str, Any] | None = None
    last_saved_at: float | None = None
    synced: int = 0
    breaker: dict[str, str] = Field(default_factory=dict)
    dead_letters: int = 0
    newest_letter_at: float | None = None
    mapping_problem: MappingProblem | None = None
    beat_heartbeat_at: float | None = None
    epoch: str = ""  # the state epoch's id (shared/redis/epoch.py); empty: none
    clocks: list[clock.Reading] = Field(default_factory=list)

    @classmethod
    def read(cls, r: redis.Redis, prefix: str) -> Snapshot:
        k = Keys(prefix)
        pipe = r.pipeline(transaction=False)
        pipe.time()
        ask_lengths(pipe, k, QUEUES)
        for command, key in ((pipe.hlen, k.unacked), (pipe.get, k.cursor), (pipe.get, k.poll_last),
                             (pipe.get, k.last_saved_at), (pipe.get, k.saved), (pipe.hgetall, k.breaker),
                             (pipe.zcard, k.dlq_index), (pipe.get, k.mapping_invalid),
                             (pipe.get, k.beat_heartbeat), (pipe.get, k.epoch), (pipe.hgetall, k.clocks)):
            command(key)
        pipe.zrange(k.dlq_index, -1, -1, withscores=True)
        values = pipe.execute()
        (seconds, micros), values = values[0], values[1:]
        queues, values = lengths_of(values, QUEUES)
        (unacked, cursor, last_poll, last_saved, saved, breaker_hash, letters, mapping, heartbeat, epoch, clocks,
         newest) = values
        now = seconds + micros / 1e6
        return cls(
            at=now, queues=queues, unacked=int(unacked), cursor=_time(cursor), last_poll=_object(last_poll),
            last_saved_at=_number(last_saved), synced=int(_number(saved) or 0),
            breaker={_text(f): _text(v) for f, v in (breaker_hash or {}).items()},
            dead_letters=int(letters), newest_letter_at=float(newest[0][1]) if newest else None,
            mapping_problem=_mapping(mapping), beat_heartbeat_at=_number(heartbeat),
            epoch=str((_object(epoch) or {}).get("id", "")) if epoch else "",
            clocks=clock.current(clocks or {}, now),
        )

    # -- the judgements, each defined once -------------------------------------------------------
    @property
    def lag_s(self) -> float | None:
        """How far the cursor is behind now; None before the first poll."""
        return self.lag_at(self.at)

    def lag_at(self, now: float) -> float | None:
        return None if self.cursor is None else now - self.cursor.timestamp()

    def lagging(self, max_lag_s: float, now: float | None = None) -> bool:
        """The cursor further behind than `max_lag_s` (STATUS_MAX_LAG_S): a problem, and an alert."""
        lag = self.lag_at(self.at if now is None else now)
        return lag is not None and lag > max_lag_s

    @property
    def backlog(self) -> int:
        """Stockout messages in Redis (both queues + every unacked one): what backpressure goes by."""
        return sum(self.queues.get(q, 0) for q in STOCKOUT_QUEUES) + self.unacked

    @property
    def poll_started_at(self) -> float | None:
        return _epoch((self.last_poll or {}).get("started_at"))

    @property
    def poll_finished_at(self) -> float | None:
        started = self.poll_started_at
        duration = _number((self.last_poll or {}).get("duration_s")) or 0.0
        return None if started is None else started + duration

    @property
    def idle_polls(self) -> int:
        return int(_number((self.last_poll or {}).get("idle_polls")) or 0)

    @property
    def beat_age_s(self) -> float | None:
        return None if self.beat_heartbeat_at is None else max(0.0, self.at - self.beat_heartbeat_at)

    def beat_alive(self, poll_interval_s: float) -> bool:
        age = self.beat_age_s
        return age is not None and age <= HEARTBEAT_ALIVE_INTERVALS * poll_interval_s

    def paused(self) -> list[Opened]:
        """The open scopes of the circuit breaker, the earliest first."""
        return breaker.open_scopes(self.breaker)

    def clock_problems(self) -> list[str]:
        """Every process's clock over a minute off Redis TIME, and polls that keep reading an empty window."""
        found = [p for p in (reading.problem() for reading in self.clocks) if p]
        idle = clock.idle_problem(self.last_poll)
        return [*found, idle] if idle else found


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def _number(value: Any) -> float | None:
    try:
        return float(_text(value)) if value not in (None, b"", "") else None
    except ValueError:
        return None


def _object(value: Any) -> dict[str, Any] | None:
    try:
        found = json.loads(value) if value else None
    except (TypeError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _time(value: Any) -> datetime | None:
    try:
        return parse_wire(_text(value)) if value else None
    except ValueError:
        return None


def _epoch(value: Any) -> float | None:
    parsed = _time(value) if isinstance(value, str) else None
    return parsed.replace(tzinfo=parsed.tzinfo or BEIJING).timestamp() if parsed else None


def _mapping(value: Any) -> MappingProblem | None:
    try:
        return MappingProblem.model_validate_json(value) if value else None
    except ValueError:
        return None
