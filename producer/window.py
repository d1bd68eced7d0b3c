"""The live poll's window as one object: the cursor it reads from, the settle delay it keeps behind
now, how a range is cut into slices, and the ledger of recent slices the lookback keeps watch over.

Airbyte-style: the cursor moves only in `close_slice`, after every page of a slice was published,
and the slice's count (WDT's `total_count` when it was read) goes into the ledger at the same time.
Why a ledger: see docs/how-it-works.md — the lookback re-reads only slices whose count changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import redis

from shared.core.settings import Settings
from shared.core.timeutil import format_wire, parse_wire
from shared.redis.keys import Keys
from shared.redis.state import StateStore
from shared.wdt.paging import ONE_SECOND, slice_range

Span = tuple[datetime, datetime]


@dataclass(frozen=True)
class Segment:
    """A closed slice of the live window and how many stockouts WDT counted in it when it was read."""

    start: datetime
    end: datetime
    count: int

    @property
    def field(self) -> str:
        return f"{format_wire(self.start)}|{format_wire(self.end)}"


def slices_for(start: datetime, end: datetime, span: timedelta) -> list[Span]:
    if end <= start:
        return []
    return slice_range(start, end, span)


class Window:
    def __init__(self, r: redis.Redis, store: StateStore, settings: Settings, initial_since: datetime) -> None:
        self.r, self.store, self.s = r, store, settings
        self.initial_since = initial_since
        keys = Keys(settings.redis_prefix)
        self.ledger_key = keys.window_ledger
        self.checked_key = keys.window_checked
        self.settle = timedelta(seconds=settings.settle_s)
        self.lookback = timedelta(seconds=settings.lookback_s)
        self.span = timedelta(days=settings.slice_days)

    def cursor(self) -> datetime | None:
        return self.store.cursor()

    def live_slices(self, now: datetime) -> list[Span]:
        """From one second after the cursor (the last slice's end, inclusive) to now − settle, and
        never into the current second: a stockout written later in it would carry a modified time the
        cursor has already passed (even with SETTLE_S=0)."""
        cursor = self.cursor()
        # The very first poll reaches one lookback before INITIAL_SINCE, as every later window's
        # lookback does: a stockout written late just before that start is not left behind.
        start = cursor + ONE_SECOND if cursor is not None else self.initial_since - self.lookback
        end = min(now - self.settle, now.replace(microsecond=0) - ONE_SECOND)
        return slices_for(start, end, self.span)

    def close_slice(self, start: datetime, end: datetime, count: int) -> None:
        """Every page of [start, end] is published: move the cursor and remember the slice's count."""
        # The count first: a crash between the two re-reads a slice whose count is known, never the reverse.
        self.r.hset(self.ledger_key, Segment(start, end, count).field, count)
        self.store.advance_cursor(end)
        self._trim(end)

    def recount(self, segment: Segment, count: int) -> None:
        self.r.hset(self.ledger_key, segment.field, count)

    def watched(self) -> list[Segment]:
        """The ledger's slices inside the lookback (ending at the cursor), oldest first."""
        cursor = self.cursor()
        if cursor is None or not self.lookback:
            return []
        since = cursor - self.lookback
        segments = []
        for field, value in self.r.hgetall(self.ledger_key).items():
            start_text, _, end_text = _text(field).partition("|")
            start, end = parse_wire(start_text), parse_wire(end_text)
            if start is None or end is None or end < since or end > cursor:
                continue
            segments.append(Segment(start, end, int(value)))
        return sorted(segments, key=lambda seg: seg.start)

    def check_due(self, now: datetime) -> bool:
        """Whether the lookback's counts are due for a comparison (every LOOKBACK_CHECK_S of `now`)."""
        if not self.lookback:
            return False
        last = self.r.get(self.checked_key)
        return last is None or now.timestamp() - float(last) >= self.s.lookback_check_s

    def checked(self, now: datetime) -> None:
        self.r.set(self.checked_key, repr(now.timestamp()))

    def _trim(self, end: datetime) -> None:
        """Forget slices that ended before the lookback (kept one lookback longer, for slow clocks)."""
        oldest = end - 2 * self.lookback - timedelta(minutes=5)
        stale = []
        for field in self.r.hkeys(self.ledger_key):
            end_text = _text(field).partition("|")[2]
            parsed = parse_wire(end_text)
            if parsed is None or parsed < oldest:
                stale.append(field)
        if stale:
            self.r.hdel(self.ledger_key, *stale)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def runs(segments: list[Segment]) -> list[list[Segment]]:
    """Contiguous runs (each slice starting one second after the last one ended): one probe each."""
    out: list[list[Segment]] = []
    for seg in segments:
        if out and out[-1][-1].end + ONE_SECOND == seg.start:
            out[-1].append(seg)
        else:
            out.append([seg])
    return out
