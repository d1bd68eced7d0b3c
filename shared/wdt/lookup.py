"""Finding one stockout by number on any edition of the gateway: the windows to ask, in order (what
we know of its times first, then 30 days at a time back to WDT_LOOKUP_HORIZON_DAYS), and what the
asking came to. Why: docs/operators.md, "Lookups by number"."""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.core.errors import InvalidRequestError, StockoutSyncError
from shared.core.timeutil import format_wire, to_beijing
from shared.wdt.paging import MAX_WINDOW, ONE_SECOND

Window = tuple[datetime, datetime] | None  # None: asked without start_time/end_time
# A known time is when the order was last seen modified or consigned: it is only ever modified later,
# so its window starts a little before (clocks differ) and reaches 30 days on.
NEAR_SLACK = timedelta(minutes=10)
# Any parameter error about the times means "this gateway wants a window" (not only 40: the
# independent gateway answers 11000000 / isv.invalid-parameter "start_time和end_time不能为空").
_ABOUT_TIMES = re.compile(r"start_time|end_time|时间", re.I)


def needs_window(error: StockoutSyncError) -> bool:
    """Whether WDT refused a query for leaving out start_time/end_time."""
    return isinstance(error, InvalidRequestError) and bool(_ABOUT_TIMES.search(f"{error.code} {error.api_message}"))


def plan(near: Iterable[datetime], now: datetime, horizon_days: int) -> Iterator[Window]:
    """Each question once, one call each: a window from every known time on, the number alone (None:
    the editions that allow it find an order of any age so), then back from now to the horizon."""
    now = to_beijing(now).replace(microsecond=0)
    horizon = now - timedelta(days=horizon_days)
    seen: set[tuple[datetime, datetime]] = set()
    for t in sorted({to_beijing(t).replace(microsecond=0) for t in near}):
        end = min(t - NEAR_SLACK + MAX_WINDOW, now)
        window = (end - MAX_WINDOW, end)
        if window not in seen:
            seen.add(window)
            yield window
    yield None
    end = now
    while end > horizon:
        window = (max(end - MAX_WINDOW, horizon), end)
        if window not in seen:
            yield window
        end = window[0] - ONE_SECOND


@dataclass
class Lookup:
    """What asking WDT for one number came to: the record (or None), every window asked, the calls."""

    number: str
    horizon_days: int
    record: dict[str, Any] | None = None
    asked: list[Window] = field(default_factory=list)
    window_required: bool = False  # the gateway refused the question without a window
    error: StockoutSyncError | None = None  # the call that failed, ending the search

    @property
    def calls(self) -> int:
        return len(self.asked)

    @property
    def found_in(self) -> str:
        return _shown(self.asked[-1]) if self.record is not None and self.asked else ""

    def line(self) -> str:
        """One line for an operator: where it was found, or everywhere it was looked for."""
        calls = f"{self.calls} call{'s' if self.calls != 1 else ''}"
        if self.record is not None:
            return f"found by {self.found_in} ({calls})"
        if self.error is not None:
            return f"asking failed after {calls}: {self.error}"
        if None in self.asked and not self.window_required:
            return f"not found: WDT asked by number alone ({calls})"
        windowed = [w for w in self.asked if w is not None]
        oldest = format_wire(min(w[0] for w in windowed)) if windowed else ""
        refused = "; WDT wants a window with a number" if self.window_required else ""
        back = f", windows back to {oldest} (WDT_LOOKUP_HORIZON_DAYS={self.horizon_days})" if oldest else ""
        return f"not found: WDT asked in {calls}{back}{refused}"


def _shown(window: Window) -> str:
    return "number alone" if window is None else f"number in {format_wire(window[0])} – {format_wire(window[1])}"
