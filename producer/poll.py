"""One poll: read the new slices of the window, publish one message per new stockout, move the cursor
only past a slice published whole; check the lookback's counts when due (docs/design.md, "The poll and
the cursor"). Backfill jobs run in a task of their own (producer/backfill/walk.py), never inside a poll."""
from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from producer.backfill.jobs import JobStore, parse_time
from producer.counts import PageCounts
from producer.window import Segment, Window, runs, slices_for
from shared.core import metrics
from shared.core.errors import StockoutSyncError
from shared.core.retry import call_with_retries, in_process_policy
from shared.core.timeutil import format_wire, now_beijing, parse_wire
from shared.observe import clock
from shared.queue.depth import backlog, live_backlog
from shared.redis import breaker, epoch
from shared.redis.state import StateStore, stockout_key
from shared.wdt.paging import WdtPage

if TYPE_CHECKING:
    from shared.core.settings import Settings
    from shared.mapping.model import Mapping
    from shared.queue.publisher import Publisher
    from shared.runtime import Runtime
    from shared.wdt.client import WdtClient

log = logging.getLogger("stockout_sync.producer")

Publish = Callable[[dict, str], object]  # what it returns (a task id, say) is not used
PAGE_ATTEMPTS = 5
_LOGGED = {"window_start", "window_end", "fetched", "published", "cursor", "duration_s"}


class PollSummary(PageCounts):
    """What one poll did; Flower shows it as the task's result and `status` reads the last one."""

    started_at: str = ""
    window_start: str = ""
    window_end: str = ""
    slices: int = 0
    cursor: str = ""
    lookback_probes: int = 0  # WDT calls comparing the lookback's counts
    lookback_rereads: int = 0  # slices read again because their count changed
    clock_skew_s: float | None = None  # this host's clock minus Redis TIME when the poll began
    idle_polls: int = 0  # polls in a row, this one included, whose live window was empty or inverted
    skipped: str = ""
    duration_s: float = 0.0

    def line(self) -> str:
        if self.skipped:
            return f"poll skipped: {self.skipped}"
        return (
            f"poll {self.window_start} → {self.window_end} (Beijing): "
            f"fetched {self.fetched}, published {self.published}, "
            f"already done {self.already_done}, already queued {self.already_queued}, "
            f"filtered out {self.filtered_out} ({self.pages} pages, {self.duration_s:.1f} s); lookback "
            f"{self.lookback_probes} probes, {self.lookback_rereads} slices re-read"
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
    wdt: WdtClient, start: datetime, end: datetime, *, on_page: Callable[[WdtPage], bool | None],
    settings: Settings, sleep: Callable[[float], None] = time.sleep, keepalive: Callable[[], None] = lambda: None,
    mapping: Mapping | None = None, reread_first: bool = True,
    on_pause: Callable[[StockoutSyncError], None] | None = None,
) -> tuple[int, int]:
    """Publish every page of one slice; a page that fails is asked again on its own.

    When a page still fails after its attempts the slice fails, and the caller leaves the cursor
    where it was; a configuration error (`on_pause`: the breaker) fails it at once. `on_page`
    returning False stops the slice (nothing more is read). Returns the pages
    read and the slice's count: WDT's `total_count` on each query's first page (else what came).
    """

    def fetch(call: Callable[[], WdtPage]) -> WdtPage:
        return call_with_retries(
            call, in_process_policy(settings, PAGE_ATTEMPTS), sleep=sleep, before=keepalive, on_pause=on_pause,
            what=f"WDT page of {format_wire(start)} → {format_wire(end)}",
        )

    pages = count = 0
    for query in status_queries(mapping):
        seen = 0
        total: int | None = None
        for page in wdt.iter_pages(start, end, fetch=fetch, reread_first=reread_first, **query):
            if total is None and page.total_count is not None:
                total = page.total_count
            pages += 1
            seen += page.raw_count
            if on_page(page) is False:
                return pages, count + (total if total is not None else seen)
        count += total if total is not None else seen
    return pages, count


def probe(
    wdt: WdtClient, start: datetime, end: datetime, *, mapping: Mapping | None = None,
    keepalive: Callable[[], None] = lambda: None,
) -> int:
    """How many stockouts WDT counts in [start, end] now: one call per status query (a page of one)."""
    total = 0
    for query in status_queries(mapping):
        keepalive()
        page = wdt.query_page(start, end, 0, 1, **query)
        total += page.total_count if page.total_count is not None else len(page.stockouts)
    return total


class OnQueue:
    """A publisher bound to one queue (`publish.many` kept, so a page is still one LPUSH)."""

    def __init__(self, publisher: Publisher, queue: str) -> None:
        self.publisher, self.queue = publisher, queue

    def __call__(self, raw: dict, key: str) -> None:
        self.publisher(raw, key, queue=self.queue)

    def many(self, items: Iterable[tuple[dict, str]]) -> None:
        self.publisher.many(items, queue=self.queue)


def poll_once(rt: Runtime, publish: Publish, *, now: datetime | None = None, trips_breaker: bool = True) -> PollSummary:
    """The beat's live poll, one at a time (Redis lock): the new slices from the cursor to now − settle,
    then the lookback's counts when due (re-reading only slices whose count changed). `trips_breaker`:
    this poll opens and closes WDT's breaker (beat's, not a one-off `stockout-sync poll` run from a shell
    with an environment of its own)."""
    settings, store = rt.settings, rt.store
    started = time.monotonic()
    now = now or now_beijing()
    skew = watch_clock(rt, "beat" if trips_breaker else "poll")
    summary = PollSummary(started_at=format_wire(now), clock_skew_s=skew)
    token = uuid.uuid4().hex
    if not store.acquire_poll_lock(token, settings.poll_lock_ttl_s):
        summary.skipped = "another poll is running"
        metrics.observe_poll("skipped", 0.0)
        log.info(summary.line(), extra={"stage": "poll", "outcome": "skipped"})
        return summary
    try:
        paused = state_problem(rt)
        if paused:
            summary.skipped = f"paused: {paused}"
            log.error("poll skipped, the pipeline is paused: %s", paused, extra={"stage": "poll", "outcome": "paused"})
            return summary
        window = Window(rt.redis, store, settings, initial_since(settings, now))
        mapping = rt.mapping

        def keepalive() -> None:
            if not store.renew_poll_lock(token, settings.poll_lock_ttl_s):
                raise RuntimeError("the poll lock expired while paging; stopping so two polls never overlap")

        def on_page(page: WdtPage) -> None:
            publish_page(page.stockouts, store=store, mapping=mapping, publish=publish, summary=summary)
            summary.pages += 1
            keepalive()

        def on_pause(error: StockoutSyncError) -> None:
            if not trips_breaker:
                return
            breaker.trip(rt.redis, settings.redis_prefix, str(error), error.api or "wdt",
                         probe_interval_s=settings.breaker_probe_interval_s, observer=metrics.BREAKER_OBSERVER)

        def read(s: datetime, e: datetime, *, reread_first: bool) -> int:
            _, count = read_slice(rt.wdt, s, e, on_page=on_page, settings=settings, keepalive=keepalive,
                                  mapping=mapping, reread_first=reread_first, on_pause=on_pause)
            return count

        with metrics.wdt_purpose("poll"):
            for s, e in window.live_slices(now):
                if not summary.window_start:
                    summary.window_start = format_wire(s)
                summary.window_end = format_wire(e)
                _wait_for_live_room(rt, settings, keepalive)
                # No closing re-read of page 0: a stockout a shift hid from this read changes the
                # slice's count, and the lookback check below re-reads the slice for it.
                window.close_slice(s, e, read(s, e, reread_first=False))
                summary.slices += 1
        if window.check_due(now):
            with metrics.wdt_purpose("lookback"):
                check_lookback(window, lambda s, e: probe(rt.wdt, s, e, mapping=mapping,
                                                          keepalive=keepalive),
                               lambda s, e: read(s, e, reread_first=True), summary)
            window.checked(now)
        summary.cursor = format_wire(window.cursor() or now)
        # A clock behind makes every window empty (or inverted: the cursor ahead of now − settle), so
        # polls "succeed" reading nothing; `status` and the alerts count them.
        summary.idle_polls = 0 if summary.slices else _idle_before(store) + 1
        # every call of this poll went through: a pause on WDT's configuration is over (the poll is its probe)
        if trips_breaker and breaker.is_open(rt.redis, settings.redis_prefix, "wdt"):
            breaker.close(rt.redis, settings.redis_prefix, "wdt", observer=metrics.BREAKER_OBSERVER)
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


def watch_clock(rt: Runtime, role: str) -> float | None:
    """Record this host's clock against Redis TIME (every poll); a skew over a minute is logged."""
    try:
        reading = clock.record(rt.redis, rt.settings.redis_prefix, role,
                               keep_s=max(clock.RECORD_S, 3 * rt.settings.poll_interval_s))
    except Exception as err:  # the poll's own Redis calls will fail louder; the reading is not worth a poll
        log.warning("the clock could not be compared with Redis TIME (%s)", type(err).__name__)
        return None
    metrics.CLOCK_SKEW.set(reading.skew_s)
    problem = reading.problem()
    if problem:
        log.error("%s", problem, extra={"stage": "clock", "outcome": "skew", "skew_s": reading.skew_s})
    return reading.skew_s


def _idle_before(store: StateStore) -> int:
    last = store.last_poll_summary() or {}
    try:
        return int(last.get("idle_polls") or 0)
    except (TypeError, ValueError):
        return 0


def state_problem(rt: Runtime) -> str:
    """Why the Redis state cannot be trusted ("" when it can), checked before anything is published;
    the epoch is created on the first poll and beat's copy kept (shared/redis/epoch.py)."""
    s = rt.settings
    cursor = rt.store.cursor()
    copy = epoch.StateCopy(s.state_copy_file) if s.state_copy_file else None
    since = recover_from(rt, cursor) if copy is not None else ""
    return epoch.check_beat(rt.redis, s.redis_prefix, copy, format_wire(cursor) if cursor else "",
                            probe_interval_s=s.breaker_probe_interval_s, observer=metrics.BREAKER_OBSERVER,
                            recover_from=since)


def recover_from(rt: Runtime, cursor: datetime | None) -> str:
    """Where beat's copy says an automatic recovery starts: the lookback before the cursor, or the
    start of the earliest backfill job whose messages may still wait — running, or finished within a
    day while backfill messages are still queued or unacked (producer/recover.py)."""
    s = rt.settings
    starts = [cursor - timedelta(seconds=s.lookback_s + s.settle_s)] if cursor is not None else []
    waiting = backlog(rt.redis, s.redis_prefix) > live_backlog(rt.redis, s.redis_prefix)
    recent = format_wire(now_beijing() - timedelta(days=1))
    for job in JobStore(rt.redis, s.redis_prefix).all():
        if not job.finished or (waiting and job.finished_at >= recent):
            with contextlib.suppress(ValueError):
                starts.append(parse_time(job.since))
    return format_wire(min(starts)) if starts else ""


def _wait_for_live_room(rt: Runtime, settings: Settings, keepalive: Callable[[], None]) -> None:
    """Between slices of a long catch-up: wait while the live queue alone is over the high-water mark."""
    prefix = settings.redis_prefix
    if live_backlog(rt.redis, prefix) < settings.high_water:
        return
    while live_backlog(rt.redis, prefix) >= settings.low_water:
        keepalive()
        time.sleep(0.5)


def check_lookback(window: Window, probe_count: Callable[[datetime, datetime], int],
                   reread: Callable[[datetime, datetime], int], summary: PollSummary) -> None:
    """Compare WDT's count of the lookback with the ledger's, and where they differ halve the range
    until the slices that changed are found; only those are read again. Costs one call when nothing
    changed, about log2(slices) + a slice's pages for each change."""

    def check(segments: list[Segment], total: int) -> None:
        if total == sum(seg.count for seg in segments):
            return
        if len(segments) == 1:
            seg = segments[0]
            summary.lookback_rereads += 1
            window.recount(seg, reread(seg.start, seg.end))
            return
        mid = len(segments) // 2
        left = probe_count(segments[0].start, segments[mid - 1].end)
        summary.lookback_probes += 1
        check(segments[:mid], left)
        check(segments[mid:], total - left)

    for run in runs(window.watched()):
        summary.lookback_probes += 1
        check(run, probe_count(run[0].start, run[-1].end))


def backfill(rt: Runtime, publish: Publish, since: datetime, until: datetime) -> PollSummary:
    """Walk a past range in this process, at once and without backpressure: the producer's own speed
    (bench figure 4). Operators use backfill jobs (`producer.backfill.walk.backfill_once`) instead."""
    started = time.monotonic()
    summary = PollSummary(
        started_at=format_wire(now_beijing()), window_start=format_wire(since), window_end=format_wire(until)
    )
    mapping = rt.mapping

    def on_page(page: WdtPage) -> None:
        publish_page(page.stockouts, store=rt.store, mapping=mapping, publish=publish, summary=summary)
        summary.pages += 1

    with metrics.wdt_purpose("backfill"):
        for s, e in slices_for(since, until, timedelta(days=rt.settings.slice_days)):
            read_slice(rt.wdt, s, e, on_page=on_page, settings=rt.settings, mapping=mapping)
            summary.slices += 1
    summary.duration_s = round(time.monotonic() - started, 3)
    return summary


def initial_since(settings: Settings, now: datetime) -> datetime:
    if settings.initial_since:
        parsed = parse_wire(settings.initial_since)
        if parsed is None:
            raise ValueError(f"INITIAL_SINCE={settings.initial_since!r} is not 'yyyy-MM-dd HH:mm:ss'")
        return parsed
    return now - timedelta(days=1)
