"""Which WDT page to read next (0, last, last−1, …, 1, 0), how a long range is cut into legal
windows, and the loop detection that stops a server ignoring `page_no`.
Why that order: docs/design.md, "Paging WDT"."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from shared.core.errors import APIConnectionError
from shared.core.timeutil import to_beijing

MAX_WINDOW = timedelta(days=30)
ONE_SECOND = timedelta(seconds=1)


class WdtPage(BaseModel):
    """One page as WDT sent it. Stockouts stay raw dicts: they are validated into `Stockout` one by
    one in the worker, so a single malformed record never breaks the page it came on."""

    page_no: int
    page_size: int
    total_count: int | None = None
    stockouts: list[dict[str, Any]] = Field(default_factory=list)
    # how many records of this page were dropped because an earlier page of the same window had
    # already yielded them (the backward order re-reads some on purpose)
    rereads: int = 0

    @property
    def raw_count(self) -> int:
        return len(self.stockouts) + self.rereads


class PaginationError(APIConnectionError):
    """The server's pages do not add up (a loop, or more pages than it said it had).

    An APIConnectionError because it is the remote side misbehaving, usually transiently (data
    changing under us); the poll is retried as a whole and the cursor does not move meanwhile.
    """


class WdtPaginator:
    """Decides the next page number from the page just read. `advance(page)` → `next_page_no`, until
    `finished`."""

    def __init__(self, page_size: int, *, max_pages: int = 10_000, reread_first: bool = True) -> None:
        self.page_size = page_size
        # False: skip the closing re-read of page 0, for a caller that checks the window's count
        # later and re-reads it when a shift changed it (the producer's lookback ledger).
        self.reread_first = reread_first
        self.max_pages = max_pages
        self.next_page_no: int | None = 0
        self.finished = False
        self.mode: str = "start"  # start → backward | forward
        self.total_count: int | None = None
        self.pages_read = 0
        self._plan: list[int] = []
        self._requested: set[int] = set()
        self._reread_zero_planned = False
        self._last_fingerprint: tuple | None = None

    def __repr__(self) -> str:
        return (
            f"WdtPaginator(mode={self.mode}, next={self.next_page_no}, read={self.pages_read}, "
            f"total={self.total_count}, finished={self.finished})"
        )

    @property
    def page_limit(self) -> int:
        if self.total_count is None:
            return self.max_pages
        return -(-self.total_count // self.page_size) + 1

    def advance(self, page: WdtPage) -> None:
        """Take the page just read (as the server sent it, before re-reads were dropped)."""
        page_no, records, total_count = page.page_no, page.stockouts, page.total_count
        if self.finished:
            raise PaginationError("paginator advanced after it finished", api="wdt")
        if page_no != self.next_page_no:
            raise PaginationError(f"read page {page_no}, but page {self.next_page_no} was due", api="wdt")
        self._requested.add(page_no)
        self.pages_read += 1
        count = len(records)

        if self.mode == "start":
            if total_count is not None:
                self.mode = "backward"
                self.total_count = max(0, int(total_count))
                last = -(-self.total_count // self.page_size) - 1
                if last >= 1:
                    self._plan = [*list(range(last, 0, -1)), *([0] if self.reread_first else [])]
                    self._reread_zero_planned = self.reread_first
            else:
                self.mode = "forward"
                self._last_fingerprint = _fingerprint(records)
                self._plan = [] if count < self.page_size else [1]
        elif self.mode == "backward":
            self._plan.pop(0)
        else:  # forward
            fingerprint = _fingerprint(records)
            if count >= self.page_size and fingerprint == self._last_fingerprint:
                raise PaginationError(
                    f"page {page_no} repeats page {page_no - 1}: the server ignores page_no", api="wdt"
                )
            self._last_fingerprint = fingerprint
            self._plan = [] if count < self.page_size else [page_no + 1]

        if not self._plan:
            self.finished = True
            self.next_page_no = None
            return
        nxt = self._plan[0]
        if nxt in self._requested and not (nxt == 0 and self._reread_zero_planned and len(self._plan) == 1):
            raise PaginationError(f"page {nxt} would be read twice", api="wdt")
        if self.pages_read + 1 > self.page_limit:
            raise PaginationError(
                f"more than {self.page_limit} pages for total_count={self.total_count} "
                f"page_size={self.page_size}",
                api="wdt",
            )
        self.next_page_no = nxt


def _fingerprint(records: Sequence[dict[str, Any]]) -> tuple:
    return tuple(
        (r.get("stockout_id"), r.get("modified")) if isinstance(r, dict) else repr(r) for r in records
    )


def _floor_second(value: datetime) -> datetime:
    return to_beijing(value).replace(microsecond=0)


def slice_range(
    start: datetime, end: datetime, max_span: timedelta | float = MAX_WINDOW
) -> list[tuple[datetime, datetime]]:
    """Cut [start, end] into contiguous closed windows WDT accepts: each spans at most
    min(max_span, 30 days); the next starts one second after the previous ends (WDT compares at
    second resolution, so windows neither overlap nor leave a gap). Times become aware Beijing
    datetimes floored to the second; an empty list when start > end."""
    if not isinstance(max_span, timedelta):
        max_span = timedelta(seconds=float(max_span))
    span = min(max_span, MAX_WINDOW)
    if span < timedelta(0):
        raise ValueError("max_span must not be negative")
    start, end = _floor_second(start), _floor_second(end)
    span = timedelta(seconds=int(span.total_seconds()))  # whole seconds, like the wire
    windows: list[tuple[datetime, datetime]] = []
    cursor = start
    while cursor <= end:
        window_end = min(cursor + span, end)
        windows.append((cursor, window_end))
        cursor = window_end + ONE_SECOND
    return windows
