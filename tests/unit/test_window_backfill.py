"""The producer's window (cursor, slices, lookback ledger) and backfill jobs' bookkeeping, on fakeredis."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from producer.backfill.jobs import Job, JobStore, eta_s
from producer.backfill.walk import Gate, SliceRead, advance
from producer.poll import PollSummary, check_lookback
from producer.window import Segment, Window, runs
from shared.core.settings import Settings
from shared.core.timeutil import BEIJING, format_wire
from shared.redis.state import StateStore

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=BEIJING)


def make_window(r, **settings) -> Window:
    s = Settings(_env_file=None, redis_prefix="t", settle_s=0, lookback_s=3600, **settings)
    return Window(r, StateStore(r, "t", 86400), s, initial_since=T0)


def test_live_slices_start_one_second_after_the_cursor_and_close_slice_records_the_count(fake_redis):
    w = make_window(fake_redis)
    # the first poll reaches one lookback before INITIAL_SINCE, and never into the current second:
    # at 08:01:00.5 the slice ends at 08:00:59
    first = T0 - timedelta(hours=1)
    assert w.live_slices(T0 + timedelta(minutes=1, microseconds=500_000)) == [(first, T0 + timedelta(seconds=59))]
    assert w.live_slices(T0 + timedelta(minutes=1, seconds=1)) == [(first, T0 + timedelta(minutes=1))]
    w.close_slice(T0, T0 + timedelta(minutes=1), 7)
    assert w.cursor() == T0 + timedelta(minutes=1)
    assert w.live_slices(T0 + timedelta(minutes=2, seconds=1)) == [
        (T0 + timedelta(seconds=61), T0 + timedelta(minutes=2))
    ]
    assert w.watched() == [Segment(T0, T0 + timedelta(minutes=1), 7)]


def test_watched_keeps_only_the_lookback_and_runs_split_at_gaps(fake_redis):
    w = make_window(fake_redis)
    start = T0
    for minutes in (30, 30, 30):  # three contiguous half-hours: the first ends outside the 1 h lookback
        end = start + timedelta(minutes=minutes)
        w.close_slice(start, end, 1)
        start = end + timedelta(seconds=1)
    watched = w.watched()
    assert len(watched) == 2 and watched[0].start == T0 + timedelta(minutes=30, seconds=1)
    gap = Segment(watched[-1].end + timedelta(seconds=5), watched[-1].end + timedelta(seconds=9), 1)
    assert [len(run) for run in runs([*watched, gap])] == [2, 1]


def _ledger(fake_redis, counts: list[int]) -> Window:
    w = make_window(fake_redis)
    start = T0
    for count in counts:
        end = start + timedelta(minutes=1)
        w.close_slice(start, end, count)
        start = end + timedelta(seconds=1)
    return w


def test_lookback_costs_one_probe_when_nothing_changed(fake_redis):
    w = _ledger(fake_redis, [100] * 16)
    calls: list[tuple] = []
    summary = PollSummary()
    check_lookback(w, lambda s, e: calls.append((s, e)) or 1600, lambda s, e: 1 / 0, summary)
    assert len(calls) == 1 and summary.lookback_rereads == 0


def test_lookback_rereads_only_the_slice_whose_count_changed(fake_redis):
    w = _ledger(fake_redis, [100] * 16)
    segments = w.watched()
    late = segments[11]  # a late write landed in the 12th minute
    truth = {seg.start: seg.count + (1 if seg == late else 0) for seg in segments}

    def probe(s, e):
        return sum(n for start, n in truth.items() if s <= start <= e)

    reread: list[datetime] = []
    summary = PollSummary()
    check_lookback(w, probe, lambda s, e: reread.append(s) or truth[s], summary)
    assert reread == [late.start]
    assert summary.lookback_probes <= 1 + 4  # one for the run, then one per halving
    again = PollSummary()
    check_lookback(w, probe, lambda s, e: 1 / 0, again)  # the ledger took the new count
    assert again.lookback_probes == 1


@pytest.mark.invariant(8)
def test_gate_pauses_at_high_water_until_below_low_water(fake_redis):
    gate = Gate(fake_redis, "t", high=10, low=5)
    assert gate.room() == 10
    fake_redis.rpush("t:stockouts.backfill", *range(10))
    assert gate.room() == 0
    fake_redis.ltrim("t:stockouts.backfill", 0, 5)  # 6 left: under high, not under low
    assert gate.room() == 0
    fake_redis.hset("t:unacked", "a", "x")
    fake_redis.ltrim("t:stockouts.backfill", 0, 2)  # 3 + 1 unacked
    assert gate.room() == 6


def test_jobs_advance_round_robin_shrink_an_overfull_slice_and_stop_when_cancelled(fake_redis):
    store = JobStore(fake_redis, "t")
    a = store.create(T0, T0 + timedelta(hours=4) - timedelta(seconds=1), slice_s=3600, synced=0)
    b = store.create(T0, T0 + timedelta(hours=2) - timedelta(seconds=1), slice_s=3600, synced=0)
    reads: list[tuple[datetime, datetime]] = []

    def read(start, end, budget):
        reads.append((start, end))
        if (end - start) > timedelta(minutes=20):  # 300 stockouts an hour: over a budget of 100
            return None
        return SliceRead(pages=1, fetched=100, published=100, total=100)

    gate = Gate(fake_redis, "t", high=1000, low=500)

    def run(seconds: float) -> None:
        advance(store, gate, read, deadline=time.monotonic() + seconds, keepalive=lambda: None, min_budget=1,
                max_budget=100, max_span_s=3600, sleep=lambda s: None)

    run(5)
    a, b = store.get(a.id), store.get(b.id)
    assert a and b and a.state == "done" and b.state == "done"
    assert a.published == 1600 and b.published == 800  # slices cut to 15 min: 16 and 8 of them
    assert a.cursor == format_wire(T0 + timedelta(hours=4) - timedelta(seconds=1))

    c = store.create(T0, T0 + timedelta(hours=4), slice_s=900, synced=0)
    store.cancel(c.id)
    run(1)
    c2 = store.get(c.id)
    assert c2 and c2.state == "cancelled" and c2.published == 0


def test_a_job_waits_while_the_gate_has_no_room_and_keeps_its_place(fake_redis):
    store = JobStore(fake_redis, "t")
    job = store.create(T0, T0 + timedelta(hours=1), slice_s=600, synced=0)
    fake_redis.rpush("t:stockouts", *range(20))
    kept: list[int] = []
    advance(
        store,
        Gate(fake_redis, "t", high=10, low=5),
        lambda s, e, b: 1 / 0,
        deadline=time.monotonic() + 0.3,
        keepalive=lambda: kept.append(1),
        min_budget=1,
        max_budget=100,
        max_span_s=3600,
        sleep=lambda s: time.sleep(0.05),
    )
    after = store.get(job.id)
    assert after and after.cursor == "" and after.state == "running" and len(kept) > 1


def test_eta_from_the_drain_rate():
    job = Job(
        id="x",
        since=format_wire(T0),
        until=format_wire(T0 + timedelta(hours=10)),
        cursor=format_wire(T0 + timedelta(hours=1)),
        published=1000,
        synced_at_start=0,
        created_epoch=100.0,
    )
    # 10 % done, 1,000 published, 900 saved in 90 s: 10/s; 9,000 still to publish + 100 waiting
    assert eta_s(job, synced_now=900, waiting=100, now_epoch=190.0) == (10000 - 1000 + 100) / 10


def test_a_failing_slice_keeps_the_cursor_and_ends_the_walk_for_this_poll(fake_redis):
    from shared.core.errors import APIConnectionError

    store = JobStore(fake_redis, "t")
    job = store.create(T0, T0 + timedelta(hours=1), slice_s=600, synced=0)
    calls: list[int] = []

    def failing(start, end, budget):
        calls.append(1)
        raise APIConnectionError("WDT down", api="wdt")

    gate = Gate(fake_redis, "t", high=1000, low=500)
    assert advance(store, gate, failing, deadline=time.monotonic() + 5, keepalive=lambda: None, min_budget=1,
                   max_budget=100, max_span_s=3600) == 0
    after = store.get(job.id)
    assert calls == [1] and after and after.cursor == "" and after.state == "running"
