"""The invariants under faults: things break for real (processes killed, Redis restarted, the APIs
failing) and the test counts what reached BIP. Nothing lost, nothing duplicated."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import redis

from ops.processes import stop, wait_until
from producer.poll import poll_once
from shared.core.errors import StockoutSyncError
from shared.core.settings import Settings
from shared.deadletters.store import DeadLetterStore
from shared.queue.app import celery_config
from shared.queue.publisher import publish_stockout, queue_entry
from shared.redis.conn import reachable
from shared.redis.keys import Keys
from shared.runtime import runtime
from tests.cli import command
from tests.integration.conftest import Processes, use_env
from tests.integration.faults import RedisServer, children, eligible, outcome, recent, saved
from tests.progress import pipeline, polls

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Short redelivery for the crash tests: visibility timeout > time limit + longest backoff (Settings checks it).
FAST_REDELIVERY = {"BROKER_VISIBILITY_TIMEOUT_S": "15", "TASK_TIME_LIMIT_S": "10", "RETRY_BACKOFF_MAX_S": "2"}


def letters_of(client) -> DeadLetterStore:
    return DeadLetterStore(client, "t")


def assert_exactly_once(row: dict) -> None:
    assert row["lost"] == 0, row
    assert row["duplicates"] == 0, row
    assert row["saved"] + row["dead_lettered"] == row["stockouts"], row


def settle(sandbox, expected: set[str], letters: DeadLetterStore) -> None:
    # a stall window longer than a redelivery (FAST_REDELIVERY's visibility timeout): crashed work comes back
    wait_until(lambda: expected <= set(saved(sandbox)) | set(letters.ids()), stall=60,
               message=f"{len(expected)} stockouts saved or dead-lettered", progress=pipeline(sandbox, letters.r))


def test_pool_process_killed_mid_save(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 150)
    expected = eligible(stockouts)
    sandbox.set_faults(bip={"latency_ms": 250})
    processes.env.update(FAST_REDELIVERY)
    worker = processes.worker(concurrency=4)
    poll_once(runtime(), publish_stockout)
    killed = 0
    for threshold in (10, 40, 70):
        wait_until(lambda n=threshold: len(sandbox.records()) >= n, message=f"{threshold} saves",
                   progress=pipeline(sandbox))
        for pid in children(worker.pid)[:2]:
            os.kill(pid, signal.SIGKILL)  # mid-save: every pool process is inside a 250 ms save
            killed += 1
    assert killed >= 4
    settle(sandbox, expected, letters_of(redis_client))
    assert_exactly_once(
        outcome(f"pool process SIGKILLed mid-save (×{killed})", sandbox, expected, letters_of(redis_client))
    )
    assert letters_of(redis_client).ids() == []


@pytest.mark.invariant(1)
def test_whole_worker_killed_and_restarted(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 120)
    expected = eligible(stockouts)
    sandbox.set_faults(bip={"latency_ms": 250})
    processes.env.update(FAST_REDELIVERY)
    worker = processes.worker(concurrency=4, name="first")
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: len(sandbox.records()) >= 20, message="20 saves", progress=pipeline(sandbox))
    stop(worker, sig=signal.SIGKILL, timeout=1)  # the main process and its pool, without warning
    in_limbo = len(expected) - len(saved(sandbox))
    assert in_limbo > 0
    held = redis_client.hkeys("t:unacked")  # what the dead worker had taken and never acked
    assert held
    processes.worker(concurrency=4, name="second")
    settle(sandbox, expected, letters_of(redis_client))
    # every message the dead worker held came back after the visibility timeout and was acked (its
    # stockout saved or, already saved by BIP, answered as done): none is left behind
    wait_until(lambda: not set(held) & set(redis_client.hkeys("t:unacked")), 60, interval=1,
               message="the dead worker's messages redelivered and acked")
    assert_exactly_once(outcome("whole worker SIGKILLed, restarted", sandbox, expected, letters_of(redis_client)))


def test_a_worker_killed_inside_its_redelivery_sweep_holds_redelivery_up_seconds_not_minutes(
        sandbox, processes, redis_client, monkeypatch):
    """A dead worker's message (in kombu's unacked hash for longer than the visibility timeout) and the
    sweep's lock that worker held when it died: kombu's own lock lasts 300 s, ours a few seconds."""
    stockout = next(s for s in recent(sandbox, 6) if s["stockout_id"] in eligible([s]))
    sid = stockout["stockout_id"]
    entry = json.loads(queue_entry(stockout, sid, f"dead-worker-{sid}"))
    tag = entry["properties"]["delivery_tag"]
    redis_client.hset("t:unacked", tag, json.dumps([entry, "", "stockouts"]))
    redis_client.zadd("t:unacked_index", {tag: time.time() - 60})
    processes.env.update(FAST_REDELIVERY)  # visibility 15 s: a sweep every 3 s
    use_env(monkeypatch, processes.env)
    # the lock as the dead worker took it, for as long as our configuration tells kombu to keep it
    options = celery_config(Settings())["broker_transport_options"]
    redis_client.set("t:unacked_mutex", "killed-worker", px=1000 * options.get("unacked_mutex_expire", 300))
    processes.worker(concurrency=1)
    wait_until(lambda: runtime().store.done(sid), 40, message="the dead worker's stockout redelivered and saved")
    # the ack follows the done mark (late acks): its entry leaves the unacked hash a moment later
    wait_until(lambda: redis_client.hlen("t:unacked") == 0, 20, interval=0.05, message="its message acknowledged")
    assert saved(sandbox)[sid] == 1


def test_redis_restarted_mid_run_with_aof(sandbox, service, tmp_path, monkeypatch):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    env = {**service, "REDIS_URL": server.url, **FAST_REDELIVERY}
    use_env(monkeypatch, env)
    procs = Processes(env, tmp_path)
    try:
        stockouts = recent(sandbox, 120)
        expected = eligible(stockouts)
        sandbox.set_faults(bip={"latency_ms": 200})
        procs.worker(concurrency=4)
        poll_once(runtime(), publish_stockout)
        wait_until(lambda: len(sandbox.records()) >= 20, message="20 saves", progress=pipeline(sandbox))
        server.kill()
        wait_until(lambda: not reachable(server.url), 10, interval=0.05, message="Redis gone")
        server.start()  # same port, same AOF: the queue, the unacked messages and the marks come back
        client = redis.Redis.from_url(server.url)
        settle(sandbox, expected, letters_of(client))
        row = outcome("Redis SIGKILLed and restarted (AOF)", sandbox, expected, letters_of(client))
        assert_exactly_once(row)
        assert row["dead_lettered"] == 0, procs.logs()[-3000:]
    finally:
        procs.stop_all()
        server.stop()


@pytest.mark.invariant(1)
def test_poll_killed_half_way_loses_nothing(sandbox, service, processes, redis_client):
    stockouts = recent(sandbox, 600)
    expected = eligible(stockouts)
    sandbox.set_faults(wdt={"latency_ms": 300})
    env = {**service, "WDT_PAGE_SIZE": "20", "POLL_LOCK_TTL_S": "3"}
    poll = subprocess.Popen(command("poll"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_until(lambda: redis_client.llen("t:stockouts") >= 60, message="some pages published",
               progress=lambda: redis_client.llen("t:stockouts"), stall=60)
    os.killpg(poll.pid, signal.SIGKILL)
    poll.wait()
    published = redis_client.llen("t:stockouts")
    assert 0 < published < len(expected)
    assert redis_client.get("t:cursor") is None, "the cursor moved past pages that were never published"

    sandbox.set_faults()
    wait_until(lambda: not redis_client.exists(Keys("t").poll_lock), 30, interval=0.1,
               message="the dead poll's lock expired")
    processes.worker(concurrency=4)
    summary = poll_once(runtime(), publish_stockout)
    assert summary.published == len(expected) - published, "the next poll publishes exactly the rest"
    settle(sandbox, expected, letters_of(redis_client))
    assert_exactly_once(
        outcome("poll SIGKILLed half-way through a window", sandbox, expected, letters_of(redis_client))
    )


def test_two_polls_at_once_publish_each_stockout_once(sandbox, service, redis_client):
    stockouts = recent(sandbox, 300)
    expected = eligible(stockouts)
    sandbox.set_faults(wdt={"latency_ms": 100})
    env = {**service, "WDT_PAGE_SIZE": "50"}
    polls = [subprocess.Popen(command("poll"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in polls]
    assert sum("another poll is running" in out for out in outputs) == 1, outputs
    assert redis_client.llen("t:stockouts") == len(expected)
    # and a third, after both: nothing new
    assert poll_once(runtime(), publish_stockout).published == 0
    assert redis_client.llen("t:stockouts") == len(expected)


@pytest.mark.invariant(2)
def test_two_beats_over_the_same_window(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 200)
    expected = eligible(stockouts)
    sandbox.set_faults(wdt={"latency_ms": 50})
    processes.env["POLL_INTERVAL_S"] = "1"
    processes.beat("beat-a")
    processes.beat("beat-b")
    wait_until(lambda: redis_client.llen("t:stockouts") >= len(expected), message="published",
               progress=lambda: redis_client.llen("t:stockouts"), stall=60)
    ended = polls(redis_client)
    wait_until(lambda: ended() >= 4, 60, interval=0.05, message="several more polls from both beats")
    assert redis_client.llen("t:stockouts") == len(expected)
    processes.worker(concurrency=4)
    settle(sandbox, expected, letters_of(redis_client))
    assert_exactly_once(outcome("two beats polling the same window", sandbox, expected, letters_of(redis_client)))


@pytest.mark.invariant(2)
def test_bip_faults_at_twenty_percent_and_a_revoked_token(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 200)
    expected = eligible(stockouts)
    sandbox.set_faults(
        bip={"http_502": 0.05, "code_310504": 0.05, "rate_limit": 0.05, "slow_stored": 0.05, "slow_s": 4}
    )
    processes.env.update({"MAX_ATTEMPTS": "10", "HTTP_READ_TIMEOUT_S": "2"})
    processes.worker(concurrency=8)
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: len(sandbox.records()) >= 40, message="40 saves", progress=pipeline(sandbox))
    sandbox.revoke_tokens()
    settle(sandbox, expected, letters_of(redis_client))
    row = outcome("BIP 20 % faults (502, 310504, rate limit, slow-but-stored) + token revoked", sandbox, expected,
                  letters_of(redis_client))
    assert_exactly_once(row)
    assert row["dead_lettered"] == 0
    counters = sandbox.counters()
    assert counters["faults"].get("bip.slow_stored"), "no slow-but-stored reply was injected"
    assert counters["bip_replays"] + counters["bip_duplicates_blocked"] >= 1, "a stored-but-timed-out save must replay"
    assert counters["bip_token_rejections"] >= 1 and counters["bip_tokens_issued"] >= 2
    assert counters["duplicate_stockouts"] == 0


def test_wdt_faults_are_retried_and_the_cursor_waits(sandbox, service, processes, redis_client, monkeypatch):
    # one slice (a failed poll must leave the cursor untouched); small pages, so more calls meet faults
    use_env(monkeypatch, {"SLICE_DAYS": "2", "WDT_PAGE_SIZE": "40"})
    stockouts = recent(sandbox, 300)
    expected = eligible(stockouts)

    # a WDT that fails every call: the poll retries its slice, gives up, and the cursor stays
    sandbox.set_faults(wdt={"http_500": 1.0})
    with pytest.raises(StockoutSyncError):
        poll_once(runtime(), publish_stockout)
    assert redis_client.get("t:cursor") is None
    assert sandbox.counters()["faults"]["wdt.http_500"] == 5, "the first page, tried five times"

    # a WDT that fails nearly half its calls in every way it can: pages are asked again until a poll completes
    sandbox.set_faults(wdt={"http_500": 0.15, "rate_limit": 0.15, "malformed_json": 0.15, "slow": 0.1, "slow_s": 4})
    for _ in range(20):
        try:
            summary = poll_once(runtime(), publish_stockout)
            break
        except StockoutSyncError:
            assert redis_client.get("t:cursor") is None
    else:
        pytest.fail("no poll completed in 20 tries")
    assert redis_client.get("t:cursor") is not None
    faults = sandbox.counters()["faults"]
    assert faults.get("wdt.rate_limit") or faults.get("wdt.malformed_json") or faults.get("wdt.slow")
    sandbox.set_faults()
    processes.worker(concurrency=4)
    settle(sandbox, expected, letters_of(redis_client))
    assert summary.published + summary.already_queued >= len(expected)
    assert_exactly_once(
        outcome("WDT faults (5xx, 1012, malformed JSON, timeouts)", sandbox, expected, letters_of(redis_client))
    )


def test_stockout_modified_after_sync_is_not_saved_again(sandbox, processes, redis_client, monkeypatch):
    stockouts = recent(sandbox, 30)
    expected = eligible(stockouts)
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    settle(sandbox, expected, letters_of(redis_client))
    for sid in list(expected)[:10]:
        sandbox.modify(sid)  # edited in WDT: now at the end of the window, inside the lookback
    again = poll_once(runtime(), publish_stockout)
    assert again.fetched >= 10 and again.published == 0 and again.already_done >= 10
    assert redis_client.llen("t:stockouts") == 0, "nothing was sent again"
    assert_exactly_once(outcome("stockouts modified in WDT after sync", sandbox, expected, letters_of(redis_client)))
