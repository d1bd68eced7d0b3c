"""`mapping check` over a range: every stockout WDT has for it run through the filters and the transform
without saving, the failures grouped by the mapping entry that would fix them (docs/design.md,
"Checking a mapping before going live")."""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from producer.poll import read_slice
from producer.window import slices_for
from shared.core.timeutil import format_wire
from shared.mapping.model import Mapping
from shared.redis.state import order_no_of, stockout_key
from worker.transform import TransformError, to_bip, validate_stockout

if TYPE_CHECKING:
    from shared.runtime import Runtime
    from shared.wdt.paging import WdtPage

EXAMPLES = 200  # stockouts kept per group (the count is always whole): the JSON stays bounded
DATA = "(stockout data) "  # the group of a failure no mapping entry can fix: the stockout is wrong


class Failure(BaseModel):
    stockout_id: str
    order_no: str = ""
    message: str


class Group(BaseModel):
    """Stockouts that fail for one reason: `entry` is the mapping key to add or change (as the dead
    letter's TransformError names it), or DATA + the WDT field when the stockout itself is wrong."""

    entry: str
    count: int = 0
    stockouts: list[Failure] = Field(default_factory=list)


class CheckReport(BaseModel):
    mapping_file: str
    fingerprint: str
    since: str = ""
    until: str = ""
    fetched: int = 0
    filtered_out: int = 0
    passed: int = 0
    failed: int = 0
    groups: list[Group] = Field(default_factory=list)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def group_of(err: TransformError) -> str:
    """The entry a failure is grouped under: indexes dropped from data fields (one group for
    details_list[0].goods_count and details_list[3].goods_count)."""
    if err.mapping_entry:
        return err.mapping_entry
    return DATA + (re.sub(r"\[\d+\]", "[]", err.field) or "(stockout)")


class DryRun:
    """Counts and groups stockouts one at a time; each stockout_id once (slices' seams and several
    status queries repeat records)."""

    def __init__(self, mapping: Mapping, source: str) -> None:
        self.mapping = mapping
        self.report = CheckReport(mapping_file=source, fingerprint=mapping.fingerprint())
        self._groups: dict[str, Group] = {}
        self._seen: set[str] = set()

    def add(self, stockouts: Iterable[Any]) -> None:
        for raw in stockouts:
            key = stockout_key(raw)
            if key in self._seen:
                continue
            self._seen.add(key)
            self.report.fetched += 1
            ok, _ = self.mapping.passes_filters(raw)
            if not ok:
                self.report.filtered_out += 1
                continue
            try:
                to_bip(validate_stockout(raw), self.mapping)
            except TransformError as err:  # exactly what the worker would dead-letter, in its words
                self.report.failed += 1
                group = self._groups.setdefault(group_of(err), Group(entry=group_of(err)))
                group.count += 1
                if len(group.stockouts) < EXAMPLES:
                    group.stockouts.append(Failure(stockout_id=key, order_no=order_no_of(raw), message=str(err)))
            else:
                self.report.passed += 1

    def finish(self) -> CheckReport:
        self.report.groups = sorted(self._groups.values(), key=lambda g: (-g.count, g.entry))
        return self.report


def check_range(rt: Runtime, since: datetime, until: datetime, *,
                on_slice: Callable[[int, int, CheckReport], None] | None = None) -> CheckReport:
    """Read [since, until] from WDT as the producer does (slices, pages, the shared limiter, the
    producer's retries) and dry-run every stockout; nothing is published, saved or marked."""
    from shared.core import metrics  # loads the metrics module: only once the command runs

    started = time.monotonic()
    mapping = rt.mapping
    run = DryRun(mapping, rt.mappings.path.name)
    run.report.since, run.report.until = format_wire(since), format_wire(until)
    slices = slices_for(since, until, timedelta(days=rt.settings.slice_days))

    def page(got: WdtPage) -> None:
        run.add(got.stockouts)

    with metrics.wdt_purpose("mapping_check"):
        for n, (s, e) in enumerate(slices, start=1):
            read_slice(rt.wdt, s, e, on_page=page, settings=rt.settings, mapping=mapping)
            if on_slice is not None:
                on_slice(n, len(slices), run.report)
    report = run.finish()
    report.duration_s = round(time.monotonic() - started, 3)
    return report
