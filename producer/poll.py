"""One poll: read WDT window by window, publish one message per new stockout, then move the cursor.

The cursor is committed only when a whole slice has been published (`close_slice`): a poll that
dies half-way re-reads that slice next time, and the Redis state makes the re-read publish nothing
that was already queued or done.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel

from shared import breaker, metrics
from shared.errors import StockoutSyncError
from shared.retry import call_with_retries, in_process_policy
from shared.state import StateStore, stockout_key
from shared.timeutil import format_wire, now_beijing, parse_wire
from shared.wdt.paging import WdtPage, slice_range

if TYPE_CHECKING:
    from shared.mapping import Mapping
    from shared.runtime import Runtime
    from shared.settings import Settings
    from shared.wdt.client import WdtClient

log = logging.getLogger("stockout_sync.producer")

Publish = Callable[[dict, str], object]  # what it returns (a task id, say) is not used
PAGE_ATTEMPTS = 5
_LOGGED = {"window_start", "window_end", "fetched", "published", "cursor", "duration_s"}


class PollSummary(BaseModel):
    """What one poll did; Flower shows it as the task's result and `status` reads the last one."""

    started_at: str = ""
    window_start: str = ""
    window_end: str = ""
    slices: int = 0
    pages: int = 0
    fetched: int = 0
    published: int = 0
    already_done: int = 0
    already_queued: int = 0
    filtered_out: int = 0
    cursor: str = ""
    skipped: str = ""
    duration_s: float = 0.0

    def line(self) -> str:
        if self.skipped:
            return f"poll skipped: {self.skipped}"
        return (
            f"poll {self.window_start} → {self.window_end}: fetched {self.fetched}, published {self.published}, "
            f"already done {self.already_done}, already queued {self.already_queued}, "
            f"filtered out {self.filtered_out} ({self.pages} pages, {self.duration_s:.1f} s)"
        )


def publish_page(
    stockouts: Iterable[dict], *, store: StateStore, mapping: Mapping, publish: Publish, summary: PollSummary
) -> None:
    """Filter, look up the whole page's state in one round trip, publish the new ones, mark them queued."""
    before = summary.model_copy()
    eligible: list[tuple[str, dict]] = []
    for raw in stockouts:
        summary.fetched += 1
        ok, reason = mapping.passes_filters(raw)
        if not ok:
            summary.filtered_out += 1
            log.debug("filtered out %s: %s", raw.get("stockout_id"), reason)
            continue
        eligible.append((stockout_key(raw), raw))
    states = store.states([key for key, _ in eligible])
    new: dict[str, dict] = {}
    for key, raw in eligible:
        state = states.get(key)
        if state is not None and state.startswith("d|"):
            summary.already_done += 1
        elif state is not None or key in new:
            summary.already_queued += 1
        else:
            new[key] = raw
    many = getattr(publish, "many", None)
    if many is not None:
        many([(raw, key) for key, raw in new.items()])  # the page in one round trip
    else:
        for key, raw in new.items():
            publish(raw, key)
    # Marked only after the messages left: a crash in between republishes (harmless, the worker
    # de-duplicates); marking first could strand a stockout as "queued" with no message.
    store.mark_queued(list(new))
    summary.published += len(new)
    metrics.count_page(before, summary)


def slices_for(start: datetime, end: datetime, slice_days: float) -> list[tuple[datetime, datetime]]:
    if end <= start:
        return []
    return slice_range(start, end, timedelta(days=slice_days))


# What WDT returns when the query names no status (已发货, 已完成).
WDT_DEFAULT_STATUSES = frozenset({"95", "110"})


def status_queries(mapping: Mapping | None) -> list[dict]:
    """The queries that fetch every status the mapping syncs: WDT's default when that covers them,
    else one query per status (a mapping that adds 113 异常发货 would otherwise never see one)."""
    wanted = set(mapping.filters.statuses) if mapping is not None else set()
    if wanted <= WDT_DEFAULT_STATUSES:
        return [{}]
    return [{"status": status} for status in sorted(wanted, key=int)]


def read_slice(
    wdt: WdtClient, start: datetime, end: datetime, *, on_page: Callable[[list[dict]], None], settings: Settings,
    sleep: Callable[[float], None] = time.sleep, keepalive: Callable[[], None] = lambda: None,
    mapping: Mapping | None = None, on_pause: Callable[[StockoutSyncError], None] | None = None,
) -> int:
    """Publish every page of one slice; a page that fails is asked again on its own.

    When a page still fails after its attempts the slice fails, and the caller leaves the cursor
    where it was; a configuration error (`on_pause`: the breaker) fails it at once. Returns the
    number of pages read.
    """

    def fetch(call: Callable[[], WdtPage]) -> WdtPage:
        return call_with_retries(
            call, in_process_policy(settings, PAGE_ATTEMPTS), sleep=sleep, before=keepalive, on_pause=on_pause,
            what=f"WDT page of {format_wire(start)} → {format_wire(end)}",
        )

    pages = 0
    for query in status_queries(mapping):
        for page in wdt.iter_pages(start, end, fetch=fetch, **query):
            on_page(page.stockouts)
            pages += 1
    return pages


def poll_once(rt: Runtime, publish: Publish, *, now: datetime | None = None) -> PollSummary:
    """The beat's poll: one at a time (Redis lock), from the cursor minus the lookback to now minus the settle delay."""
    settings, store = rt.settings, rt.store
    started = time.monotonic()
    now = now or now_beijing()
    summary = PollSummary(started_at=format_wire(now))
    token = uuid.uuid4().hex
    if not store.acquire_poll_lock(token, settings.poll_lock_ttl_s):
        summary.skipped = "another poll is running"
        metrics.observe_poll("skipped", 0.0)
        log.info(summary.line(), extra={"stage": "poll", "outcome": "skipped"})
        return summary
    try:
        since = store.cursor() or initial_since(settings, now)
        start = since - timedelta(seconds=settings.lookback_s)
        end = now - timedelta(seconds=settings.settle_s)
        summary.window_start, summary.window_end = format_wire(start), format_wire(end)
        mapping = rt.mapping

        def keepalive() -> None:
            if not store.renew_poll_lock(token, settings.poll_lock_ttl_s):
                raise RuntimeError("the poll lock expired while paging; stopping so two polls never overlap")

        def on_page(stockouts: list[dict]) -> None:
            publish_page(stockouts, store=store, mapping=mapping, publish=publish, summary=summary)
            summary.pages += 1
            keepalive()

        def on_pause(error: StockoutSyncError) -> None:
            breaker.trip(rt.redis, settings.redis_prefix, str(error), error.api or "wdt",
                         probe_interval_s=settings.breaker_probe_interval_s, observer=metrics.BREAKER_OBSERVER)

        for s, e in slices_for(start, end, settings.slice_days):
            read_slice(rt.wdt, s, e, on_page=on_page, settings=settings, keepalive=keepalive, mapping=mapping,
                       on_pause=on_pause)
            store.advance_cursor(e)  # close_slice: every page of [s, e] is published
            summary.slices += 1
        # every call of this poll went through: a pause on WDT's configuration is over (the poll is its probe)
        if breaker.is_open(rt.redis, settings.redis_prefix, "wdt"):
            breaker.close(rt.redis, settings.redis_prefix, "wdt", observer=metrics.BREAKER_OBSERVER)
        summary.cursor = format_wire(store.cursor() or since)
    except BaseException:
        metrics.observe_poll("failed", time.monotonic() - started)
        raise
    finally:
        store.release_poll_lock(token)
        summary.duration_s = round(time.monotonic() - started, 3)
    store.save_poll_summary(summary.model_dump())
    metrics.observe_poll("ok", summary.duration_s)
    log.info(summary.line(), extra={"stage": "poll", "outcome": "ok", **summary.model_dump(include=_LOGGED)})
    return summary


def backfill(
    rt: Runtime, publish: Publish, since: datetime, until: datetime, *,
    on_progress: Callable[[PollSummary], None] | None = None, on_slice: Callable[[datetime], None] | None = None,
) -> PollSummary:
    """Publish a past range. Shares the de-duplication with the beat's polls, so it is safe beside
    them, but takes no poll lock and never moves the cursor."""
    started = time.monotonic()
    summary = PollSummary(
        started_at=format_wire(now_beijing()), window_start=format_wire(since), window_end=format_wire(until)
    )
    mapping = rt.mapping

    def on_page(stockouts: list[dict]) -> None:
        publish_page(stockouts, store=rt.store, mapping=mapping, publish=publish, summary=summary)
        summary.pages += 1
        if on_progress:
            on_progress(summary)

    for s, e in slices_for(since, until, rt.settings.slice_days):
        read_slice(rt.wdt, s, e, on_page=on_page, settings=rt.settings, mapping=mapping)
        summary.slices += 1
        if on_slice:
            on_slice(e)
    summary.duration_s = round(time.monotonic() - started, 3)
    log.info("backfill: " + summary.line())
    return summary


def initial_since(settings: Settings, now: datetime) -> datetime:
    if settings.initial_since:
        parsed = parse_wire(settings.initial_since)
        if parsed is None:
            raise ValueError(f"INITIAL_SINCE={settings.initial_since!r} is not 'yyyy-MM-dd HH:mm:ss'")
        return parsed
    return now - timedelta(days=1)
