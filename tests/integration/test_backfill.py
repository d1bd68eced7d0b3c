"""Backfill jobs with the real beat and workers: SIGKILL mid-slice and a restart of every process lose
nothing and publish nothing twice beyond what the marks skip; overlapping jobs save each stockout once;
cancel stops a job."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest

from ops.processes import stop, wait_until
from producer.backfill.jobs import JobStore
from shared.core.timeutil import now_beijing
from tests.integration.conftest import live_from_now
from tests.integration.faults import eligible, saved
from tests.progress import pipeline, polls

# Small pages and slices and a slow WDT, so a job takes many slices and a kill lands inside one.
ENV = {
    "POLL_INTERVAL_S": "1",
    "SLICE_DAYS": "0.25",
    "WDT_PAGE_SIZE": "20",
    "WDT_RATE_PER_MINUTE": "300",
    "POLL_LOCK_TTL_S": "5",
}  # a killed beat's lock expires within the test


@pytest.fixture
def env(service, monkeypatch, processes):
    return live_from_now(monkeypatch, processes, ENV)


@pytest.mark.slow
def test_a_job_survives_sigkill_mid_slice_and_a_restart_of_every_process(sandbox, env, processes, redis_client):
    now = now_beijing()
    expected = eligible(sandbox.generate(400, start=now - timedelta(days=3), end=now - timedelta(days=1)))
    jobs = JobStore(redis_client, "t")
    job = jobs.create(now - timedelta(days=3, hours=1), now - timedelta(hours=20), slice_s=21600, synced=0)
    beat = processes.beat()

    def inside_a_slice():
        current = jobs.get(job.id)
        waiting = redis_client.llen("t:stockouts.backfill")
        # some slices committed, and messages of the next one out but not yet committed
        return current if current and current.cursor and not current.finished and waiting > current.published else None

    wait_until(inside_a_slice, 60, interval=0.02, message="the job inside a slice")
    stop(beat, sig=signal.SIGKILL, timeout=5)
    at_kill = jobs.get(job.id)
    assert at_kill is not None and at_kill.state == "running"
    uncommitted = redis_client.llen("t:stockouts.backfill") - at_kill.published
    assert uncommitted > 0, "killed inside a slice: some of its messages were out, its cursor not moved"

    # every process again (the poll lock of the dead beat expires first), workers too this time
    processes.procs.remove(beat)
    processes.worker(concurrency=4)
    processes.beat(name="beat2")
    wait_until(lambda: (j := jobs.get(job.id)) and j.state == "done", 120, message="the job done after the restart")
    wait_until(lambda: expected <= set(saved(sandbox)), message="every stockout saved",
               progress=pipeline(sandbox, redis_client))

    done = jobs.get(job.id)
    assert done is not None
    counts = saved(sandbox)
    assert set(counts) == expected and max(counts.values()) == 1, "lost or saved twice"
    # published once each: the re-read slice found its stockouts marked queued (a kill between a
    # page's LPUSH and its marks could repeat that one page, which the done marks then skip)
    assert len(expected) <= done.published + uncommitted <= len(expected) + 20
    assert done.already_queued >= uncommitted - 20


def test_overlapping_jobs_save_each_stockout_once_and_cancel_stops_a_job(sandbox, env, processes, redis_client):
    now = now_beijing()
    expected = eligible(sandbox.generate(200, start=now - timedelta(days=3), end=now - timedelta(days=1)))
    jobs = JobStore(redis_client, "t")
    a = jobs.create(now - timedelta(days=3, hours=1), now - timedelta(days=1, hours=12), slice_s=21600, synced=0)
    b = jobs.create(now - timedelta(days=2), now - timedelta(hours=20), slice_s=21600, synced=0)
    processes.worker(concurrency=4)
    processes.beat()
    wait_until(lambda: all((j := jobs.get(x.id)) and j.state == "done" for x in (a, b)), 120, message="both jobs done")
    wait_until(lambda: expected <= set(saved(sandbox)), message="every stockout saved",
               progress=pipeline(sandbox, redis_client))
    counts = saved(sandbox)
    assert set(counts) == expected and max(counts.values()) == 1
    ja, jb = jobs.get(a.id), jobs.get(b.id)
    assert ja and jb and ja.published + jb.published == len(expected), "the overlap was published by one job only"
    assert ja.already_queued + ja.already_done + jb.already_queued + jb.already_done > 0, "the overlap was read twice"

    # cancel: the job stops where it is and publishes nothing more
    c = jobs.create(now - timedelta(days=30), now - timedelta(days=4), slice_s=21600, synced=0)
    wait_until(lambda: (j := jobs.get(c.id)) and j.slices >= 2, 60, interval=0.05, message="the job walking")
    jobs.cancel(c.id)
    stopped = jobs.get(c.id)
    assert stopped is not None and stopped.state == "cancelled"
    ended = polls(redis_client)
    wait_until(lambda: ended() >= 3, 60, interval=0.05, message="three more polls")
    after = jobs.get(c.id)
    assert after is not None and after.cursor == stopped.cursor and after.state == "cancelled"
