"""Live first with the real beat and workers and a WDT that takes 300 ms a call: a stockout that appears
while a backfill slice is being read is saved before that slice is done (the live poll and the backfill
task run beside each other, each under its own lock), and the backfill then finishes untouched."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ops.processes import wait_until
from producer.backfill.jobs import JobStore
from producer.backfill.walk import backfill_once
from shared.core.timeutil import now_beijing
from shared.redis import breaker
from shared.runtime import runtime
from tests.integration.conftest import live_from_now
from tests.integration.faults import eligible, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration

# One slice of the whole range (3 days) and pages of 20: the backfill's slice is ~30 calls of 300 ms.
ENV = {"POLL_INTERVAL_S": "1", "SLICE_DAYS": "3", "WDT_PAGE_SIZE": "20"}


@pytest.fixture
def env(service, monkeypatch, processes):
    return live_from_now(monkeypatch, processes, ENV)


def test_a_live_stockout_is_saved_while_a_backfill_slice_is_still_being_read(sandbox, env, processes,
                                                                              redis_client):
    now = now_beijing()
    history = eligible(sandbox.generate(600, start=now - timedelta(days=2, hours=12), end=now - timedelta(days=1)))
    sandbox.set_latency(wdt_ms=300)  # a sandbox of this test's own: no need to set it back
    processes.worker(concurrency=4)
    processes.beat()
    wait_until(lambda: redis_client.get("t:poll:last"), 60, message="the first live poll")
    jobs = JobStore(redis_client, "t")
    job = jobs.create(now - timedelta(days=3), now - timedelta(hours=20), slice_s=3 * 86400, synced=0)

    # the slice's first page is out (and saved) while the slice itself is not committed: inside it
    wait_until(lambda: history & set(saved(sandbox)), 60, interval=0.05, message="a backfill page saved")
    inside = jobs.get(job.id)
    assert inside is not None and inside.slices == 0 and not inside.cursor, "the test needs a slice in progress"

    live = eligible(sandbox.generate(3, start=now_beijing(), end=now_beijing()))
    wait_until(lambda: live <= set(saved(sandbox)), 30, interval=0.05, message="the live stockouts saved",
               progress=pipeline(sandbox, redis_client))
    during = jobs.get(job.id)
    assert during is not None and during.slices == 0 and not during.cursor, (
        "the live stockouts waited for the backfill slice to be read")

    wait_until(lambda: (j := jobs.get(job.id)) and j.state == "done", 120, message="the backfill done")
    wait_until(lambda: history <= set(saved(sandbox)), 60, message="every backfilled stockout saved",
               progress=pipeline(sandbox, redis_client))
    counts = saved(sandbox)
    assert set(counts) == history | live and max(counts.values()) == 1


def test_a_backfill_run_takes_its_own_lock_never_the_polls(service, redis_client):
    rt = runtime()
    assert rt.store.acquire_poll_lock("a-live-poll", 60)
    sent: list[str] = []
    ran = backfill_once(rt, lambda raw, key: sent.append(key), budget_s=1)
    assert ran.skipped == "" and ran.slices == 0  # ran beside the live poll (no job to walk)
    assert rt.store.acquire_poll_lock("another-run", 60, task="backfill")
    assert backfill_once(rt, lambda raw, key: sent.append(key), budget_s=1).skipped
    assert redis_client.get("t:poll:lock") == b"a-live-poll" and not sent
    rt.store.release_poll_lock("another-run", task="backfill")
    for scope in ("wdt", "state"):  # WDT's configuration failing, our state lost: the live poll probes
        breaker.trip(redis_client, "t", f"{scope} paused by the test", scope)
        assert f"paused: {scope}" in backfill_once(rt, lambda raw, key: sent.append(key), budget_s=1).skipped
        breaker.close(redis_client, "t", scope)
