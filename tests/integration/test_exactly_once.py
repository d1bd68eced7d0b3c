"""Exactly once when a memory fails: Redis loses its state (FLUSHDB, a restart without persistence),
BIP forgets a resubmitCheckKey (the sandbox's key memory of a few seconds), a foreign record holds our
code, two WDT accounts save into one tenant, an older version's keys. Counted in BIP."""
from __future__ import annotations

import json
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from ops.processes import stop, wait_until
from shared.bip.idempotency import resubmit_key
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.conftest import Processes, use_env
from tests.integration.faults import RedisServer, eligible, outcome, recent, saved
from tests.integration.receivers import Receiver
from tests.progress import pipeline
from worker.transform import to_bip, validate_stockout

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY_MEMORY_S = 3  # the sandbox's BIP forgets every key this long after its save, then saves it again
# A worker must die while BIP holds its answer, before its own read times out (connect 2 + read 5 s).
FAST_REDELIVERY = {"BROKER_VISIBILITY_TIMEOUT_S": "15", "TASK_TIME_LIMIT_S": "10", "RETRY_BACKOFF_MAX_S": "2",
                   "BIP_KEY_MEMORY_S": "30", "HTTP_READ_TIMEOUT_S": "5"}


@pytest.fixture
def hook():
    """A webhook alert channel that records what beat sends."""
    made = Receiver()
    yield made
    made.close()


def assert_exactly_once(row: dict) -> None:
    assert row["lost"] == 0, row
    assert row["duplicates"] == 0, row
    assert row["saved"] + row["dead_lettered"] == row["stockouts"], row


def all_saved(sandbox, client, expected: set[str], what: str) -> None:
    wait_until(lambda: expected <= set(saved(sandbox)), stall=60, message=f"{len(expected)} stockouts {what}",
               progress=pipeline(sandbox, client))


def forget_every_key(sandbox) -> None:
    """The sandbox's BIP forgets every key saved so far, as it would an hour later."""
    assert sandbox.forget_keys() > 0, "BIP held no key to forget"


def recover_from(copy: Path) -> str:
    """Where beat's copy of the state says an automatic recovery would start ('' : it cannot)."""
    try:
        return str(json.loads(copy.read_text(encoding="utf-8")).get("recover_from", ""))
    except (OSError, ValueError):
        return ""


def paused(env: dict[str, str]) -> bool:
    shown = cli(env, "status")
    return shown.returncode == 1 and "circuit breaker open for state" in shown.stdout


def alerted(hook) -> bool:
    return any('"api": "state"' in json.dumps(r.body, ensure_ascii=False) and "open" in json.dumps(r.body)
               for r in hook.requests)


def new(sandbox, count: int):
    """Stockouts written in WDT just now: the next poll reads them."""
    now = now_beijing()
    return sandbox.generate(count, start=now - timedelta(seconds=20), end=now)


def sync_env(processes: Processes, **extra: str) -> dict[str, str]:
    processes.env.update(POLL_INTERVAL_S="1", INITIAL_SINCE=format_wire(now_beijing() - timedelta(hours=3)),
                         **extra)
    return processes.env


@pytest.mark.invariant(10)
@pytest.mark.parametrize("during_backfill", [False, True], ids=["after-a-sync", "during-a-backfill"])
def test_flushdb_pauses_with_status_and_alert_until_recover(sandbox, processes, redis_client, hook,
                                                             during_backfill):
    env = sync_env(processes, AUTO_RECOVER="false", ALERT_WEBHOOK_URL=hook.url("/alerts"),
                   ALERT_CHECK_INTERVAL_S="0.5")
    sandbox.set_key_memory(KEY_MEMORY_S)
    expected = eligible(recent(sandbox, 30))
    processes.worker(concurrency=2)
    processes.beat()
    all_saved(sandbox, redis_client, expected, "synced")
    since = now_beijing() - timedelta(days=3)
    if during_backfill:
        history = sandbox.generate(120, start=since + timedelta(hours=1), end=since + timedelta(days=1))
        expected |= eligible(history)
        sandbox.set_faults(bip={"latency_ms": 300})
        started = cli(env, "backfill", "--since", format_wire(since), "--until", format_wire(since + timedelta(days=2)))
        assert started.returncode == 0, started.stdout + started.stderr
        wait_until(lambda: len(expected & set(saved(sandbox))) >= 40, message="the backfill under way",
                   progress=pipeline(sandbox, redis_client))
    forget_every_key(sandbox)
    redis_client.flushdb()
    wait_until(lambda: paused(env), message="status exit 1 naming the state pause", timeout=90)
    wait_until(lambda: alerted(hook), message="an alert about the state", timeout=60)
    sandbox.set_faults()
    saves = sandbox.counters()["bip_saves"]
    paused_at = time.monotonic()
    while time.monotonic() - paused_at < 3:  # several polls and worker retries while paused: none may save
        assert sandbox.counters()["bip_saves"] == saves
        time.sleep(0.5)
    done = cli(env, "recover", "--since", format_wire(since))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done marks rebuilt from BIP" in done.stdout and "the pause is over" in done.stdout
    expected |= eligible(new(sandbox, 10))  # and the pipeline runs again
    all_saved(sandbox, redis_client, expected, "saved after recover")
    fault = f"Redis FLUSHDB {'during a backfill' if during_backfill else 'after a sync'}, BIP's key memory 3 s"
    row = outcome(fault, sandbox, expected, DeadLetterStore(redis_client, "t"))
    assert_exactly_once(row)
    assert not paused(env)


@pytest.mark.invariant(10)
@pytest.mark.parametrize("during_backfill", [False, True], ids=["after-a-sync", "during-a-backfill"])
def test_redis_restarted_without_persistence_recovers_by_itself(sandbox, service, tmp_path, monkeypatch,
                                                                 during_backfill):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", persist=False).start()
    env = {**service, "REDIS_URL": server.url, "POLL_INTERVAL_S": "1",
           "INITIAL_SINCE": format_wire(now_beijing() - timedelta(hours=3))}
    use_env(monkeypatch, env)
    procs = Processes(env, tmp_path)
    sandbox.set_key_memory(KEY_MEMORY_S)
    try:
        expected = eligible(recent(sandbox, 30))
        procs.worker(concurrency=2)
        procs.beat()
        client = redis.Redis.from_url(server.url)
        all_saved(sandbox, client, expected, "synced")
        if during_backfill:
            since = now_beijing() - timedelta(days=3)
            expected |= eligible(sandbox.generate(120, start=since + timedelta(hours=1), end=since + timedelta(days=1)))
            sandbox.set_faults(bip={"latency_ms": 300})
            started = cli(env, "backfill", "--since", format_wire(since), "--until",
                          format_wire(since + timedelta(days=2)))
            assert started.returncode == 0, started.stdout + started.stderr
            wait_until(lambda: len(expected & set(saved(sandbox))) >= 40, message="the backfill under way",
                       progress=pipeline(sandbox, client))
        # beat's copy of the state (written before each poll) must say where a rebuild starts: after the
        # first poll's cursor, or from the backfill's start once a poll has seen the job
        copy = tmp_path / "beat.schedule.state.json"
        wait_until(lambda: recover_from(copy) and (not during_backfill or recover_from(copy) <= format_wire(since)),
                   message="beat's copy naming where a recovery starts")
        forget_every_key(sandbox)
        server.kill()
        server.start()  # empty: no AOF, no RDB
        sandbox.set_faults()
        expected |= eligible(new(sandbox, 10))
        all_saved(sandbox, client, expected, "saved after the restart")
        when = "during a backfill" if during_backfill else "after a sync"
        row = outcome(f"Redis restarted without persistence {when}, automatic recovery", sandbox, expected,
                      DeadLetterStore(client, "t"))
        assert_exactly_once(row)
        assert "state recovered for" in procs.logs()
    finally:
        procs.stop_all()
        server.stop()


@pytest.mark.invariant(10)
def test_worker_killed_between_bips_store_and_its_answer_with_the_key_forgotten(sandbox, processes, redis_client):
    processes.env.update(FAST_REDELIVERY)
    sandbox.set_key_memory(KEY_MEMORY_S)
    stockouts = recent(sandbox, 4)
    expected = eligible(stockouts)
    sandbox.set_faults(bip={"slow_stored": 1.0, "slow_s": 60})  # stored, then the answer waits
    worker = processes.worker(concurrency=4, name="first")
    for s in stockouts:
        publish_stockout(s, s["stockout_id"])
    wait_until(lambda: expected <= set(saved(sandbox)), message="BIP stored them all (no answer yet)",
               progress=pipeline(sandbox, redis_client))
    stop(worker, sig=signal.SIGKILL, timeout=1)
    sandbox.set_faults()
    forget_every_key(sandbox)  # long before the redelivery (visibility timeout 15 s)
    processes.worker(concurrency=2, name="second")
    wait_until(lambda: not redis_client.hlen("t:unacked") and not redis_client.llen("t:stockouts")
               and all(runtime().store.done(sid) for sid in expected),
               stall=60, message="redelivered and marked done", progress=pipeline(sandbox, redis_client))
    row = outcome("worker SIGKILLed between BIP storing and answering, key forgotten before redelivery",
                  sandbox, expected, DeadLetterStore(redis_client, "t"))
    assert_exactly_once(row)
    assert "proving it absent in BIP" in processes.logs()


@pytest.mark.invariant(10)
def test_a_dead_letter_requeued_after_bip_forgot_its_key_is_not_saved_twice(sandbox, processes, redis_client):
    """Every answer slower than our timeout: the stockout is dead-lettered although BIP stored it.
    Requeued once BIP forgot the key, its in-flight marker is stale: absence is proven first."""
    processes.env.update(FAST_REDELIVERY, MAX_ATTEMPTS="2", HTTP_READ_TIMEOUT_S="2")
    sandbox.set_key_memory(20)  # under what we assume (BIP_KEY_MEMORY_S=30), over half of it
    stockout = next(s for s in recent(sandbox, 4) if s["status"] in ("95", "110"))
    sid = stockout["stockout_id"]
    sandbox.set_faults(bip={"slow_stored": 1.0, "slow_s": 30})
    processes.worker(concurrency=1)
    publish_stockout(stockout, sid)
    letters = DeadLetterStore(redis_client, "t")
    wait_until(lambda: letters.get(sid), message="dead-lettered after its timeouts", progress=pipeline(sandbox))
    assert set(saved(sandbox)) == {sid}, "BIP stored it all the same"
    sandbox.set_faults()
    first_sent = float(redis_client.hget("t:inflight", sid).split(b"|")[0]) / 1000
    time.sleep(max(0.0, first_sent + 21 - time.time()))  # BIP forgets the key (a wait, not a proof)
    requeued = cli(processes.env, "dlq", "requeue", sid)
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    wait_until(lambda: runtime().store.done(sid), message="done after the requeue", progress=pipeline(sandbox))
    row = outcome("a dead letter requeued after BIP forgot its key (stale in-flight marker)", sandbox, {sid},
                  DeadLetterStore(redis_client, "t"))
    assert row["duplicates"] == 0 and row["saved"] == 1, row
    assert "first sent" in processes.logs()


def with_codes(processes: Processes, monkeypatch, tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.toml"
    text = Path(processes.env["MAPPING_FILE"]).read_text(encoding="utf-8")
    mapping.write_text(text.replace("send_code = false", "send_code = true"), encoding="utf-8")
    processes.env["MAPPING_FILE"] = str(mapping)
    use_env(monkeypatch, processes.env)


@pytest.mark.invariant(10)
def test_a_foreign_record_with_our_code_is_a_dead_letter_naming_it(sandbox, processes, redis_client, monkeypatch,
                                                                   tmp_path):
    with_codes(processes, monkeypatch, tmp_path)
    stockouts = recent(sandbox, 6)
    expected = eligible(stockouts)
    victim = next(s for s in stockouts if s["stockout_id"] in expected)
    foreign = sandbox.add_record(victim["order_no"], define1="someone-else")
    processes.worker(concurrency=2)
    for s in stockouts:
        publish_stockout(s, s["stockout_id"])
    letters = DeadLetterStore(redis_client, "t")
    letter = wait_until(lambda: letters.get(victim["stockout_id"]), message="the victim's dead letter",
                        progress=pipeline(sandbox, redis_client))
    assert foreign["id"] in letter.message and victim["order_no"] in letter.message, letter.message
    assert letter.error_class == "ForeignRecordError" and letter.attempts == 1
    assert runtime().store.done(victim["stockout_id"]) is None
    all_saved(sandbox, redis_client, expected - {victim["stockout_id"]}, "the others saved")
    window = [format_wire(now_beijing() - timedelta(hours=3)), format_wire(now_beijing())]
    sandbox.set_bip_list(ignore_filters=True)  # the look-up by code is the one that must not be fooled
    checked = cli(processes.env, "reconcile", "--since", window[0], "--until", window[1], "--json")
    report = json.loads(checked.stdout)
    assert victim["stockout_id"] in [m["stockout_id"] for m in report["missing"]], report
    assert foreign["id"] in next(m["proof"] for m in report["missing"] if m["stockout_id"] == victim["stockout_id"])


@pytest.mark.invariant(10)
def test_two_accounts_into_one_tenant_never_replay_each_other(sandbox, service, redis_client, tmp_path, monkeypatch):
    from sandbox import Sandbox, SandboxConfig

    # shop B: its own WDT account (same stockout ids as shop A's), the same BIP tenant as shop A
    shop_b = Sandbox(SandboxConfig(wdt_sid="shop-b")).start()
    try:
        a_stockouts, b_stockouts = recent(sandbox, 20), recent(shop_b, 20)
        assert {s["stockout_id"] for s in a_stockouts} & {s["stockout_id"] for s in b_stockouts}, "ids must clash"
        env_b = {**service, "REDIS_PREFIX": "t2", "WDT_SID": "shop-b", "WDT_QIMEN_URL": shop_b.wdt_url}
        a, b = Processes(service, tmp_path / "a"), Processes(env_b, tmp_path / "b")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        try:
            a.worker(concurrency=2, name="a")
            for s in a_stockouts:
                publish_stockout(s, s["stockout_id"])
            all_saved(sandbox, redis_client, eligible(a_stockouts), "of shop A saved")
            b.worker(concurrency=2, name="b")
            use_env(monkeypatch, env_b)
            for s in b_stockouts:
                publish_stockout(s, s["stockout_id"])
            wait_until(lambda: len(sandbox.records()) >= len(eligible(a_stockouts)) + len(eligible(b_stockouts)),
                       message="shop B's saved too", progress=pipeline(sandbox, redis_client))
        finally:
            a.stop_all()
            b.stop_all()
        keys = {r["resubmitCheckKey"] for r in sandbox.records()}
        assert len(keys) == len(sandbox.records()), "one key per record"
        assert {resubmit_key(sid, 0, "shop-b") for sid in eligible(b_stockouts)} <= keys
        assert sandbox.counters()["bip_replays"] == 0, "shop B got shop A's records replayed"
    finally:
        shop_b.stop()


@pytest.mark.invariant(10)
def test_an_older_versions_state_and_keys_carry_over(sandbox, processes, redis_client):
    """Before the account was in the key: its done marks still count, and a save it left in flight
    (BIP stored it under the old key, no done mark) is found in BIP, not saved again under the new key."""
    stockouts = recent(sandbox, 6)
    expected = sorted(eligible(stockouts))
    old_done, in_flight = expected[0], expected[1]
    rt = runtime()
    by_id = {s["stockout_id"]: s for s in stockouts}
    for sid in (old_done, in_flight):  # what the old version sent: the account-less key
        rt.bip.save(to_bip(validate_stockout(by_id[sid]), rt.mapping))
    records = {r["data"]["defines!define1"]: r for r in sandbox.records()}
    rt.store.mark_done(old_done, records[old_done]["id"], records[old_done]["code"])
    rt.store.advance_cursor(now_beijing() - timedelta(minutes=1))  # an old state: a cursor, no epoch
    sandbox.set_key_memory(0)  # BIP forgot the old keys too
    processes.worker(concurrency=2)
    for s in stockouts:
        publish_stockout(s, s["stockout_id"])
    wait_until(lambda: all(rt.store.done(sid) for sid in expected), message="all done",
               progress=pipeline(sandbox, redis_client))
    row = outcome("upgrade: an older version's done marks and in-flight saves", sandbox, set(expected),
                  DeadLetterStore(redis_client, "t"))
    assert_exactly_once(row)
    assert rt.store.done(in_flight).bip_id == records[in_flight]["id"]
