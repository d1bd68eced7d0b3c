"""`stockout-sync status`: what it shows and when it asks for attention (its exit code)."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from ops.processes import wait_until
from producer.backfill.jobs import JobStore
from shared.core.timeutil import now_beijing
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis.keys import BACKFILL_QUEUE
from shared.redis.ratelimit import RateLimiter
from shared.runtime import runtime
from tests.cli import cli, cli_all
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def status_json(env, *args) -> tuple[int, dict]:
    done = cli(env, "status", "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_a_healthy_pipeline_is_all_good(sandbox, processes):
    now = now_beijing()
    stockouts = sandbox.generate(20, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    eligible = {s["stockout_id"] for s in stockouts if s["status"] in ("95", "110")}
    processes.env["POLL_INTERVAL_S"] = "1"
    processes.worker(concurrency=2)
    processes.beat()
    wait_until(lambda: len(sandbox.records()) == len(eligible), message="sync", progress=pipeline(sandbox))
    wait_until(lambda: runtime().store.last_poll_summary(), 60, message="a poll summary")

    # four commands at once: each mostly waits for the workers' answers
    runs = cli_all(processes.env, ["status", "--json"], ["status"], ["status", "--health", "worker"],
                   ["status", "--health", "beat"])
    code, report = runs[0].returncode, json.loads(runs[0].stdout)
    assert code == 0, report["problems"]
    assert report["problems"] == []
    assert 0 <= report["lag_s"] < 30 and report["cursor"]
    last = report["last_poll"]  # every stockout a poll read is accounted for, once
    assert last["fetched"] == last["published"] + last["already_done"] + last["already_queued"] + last["filtered_out"]
    assert report["last_poll_age_s"] < 30
    assert report["queues"] == {"stockouts": 0, "stockouts.backfill": 0, "dead_letter": 0, "producer": 0}
    assert report["backlog"] == 0 and report["high_water"] > 0 and report["backfills"] == []
    assert report["in_flight"] == 0
    assert report["beat_alive"] and report["beat_heartbeat_age_s"] < 30, "the real beat's polls beat its heart"
    assert report["synced"] == len(eligible)
    assert report["dead_letters"] == 0 and report["dead_letters_by_reason"] == []
    assert report["bip_token"]["cached"] and 6000 < report["bip_token"]["expires_in_s"] <= 7200
    assert report["bip_token"]["renew_in_s"] < report["bip_token"]["expires_in_s"]
    assert {r["name"] for r in report["rate_limits"]} == {"wdt", "bip"}
    queues = {w["hostname"].split("@")[0]: w["queues"] for w in report["workers"]}
    assert queues["w1"] == ["stockouts", "stockouts.backfill"] and queues["producer"] == ["producer"]
    assert not any(v in json.dumps(report) for k, v in sandbox.env().items() if "SECRET" in k)

    text = runs[1]
    assert text.returncode == 0
    for words in ("cursor", "last poll", "stockouts 0", "BIP token", "rate limit bip", "w1@", "all good"):
        assert words in text.stdout, text.stdout
    assert re.search(rf"synced\s+│ {len(eligible)} ", text.stdout), text.stdout
    for role, health in zip(("worker", "beat"), runs[2:], strict=False):
        assert health.returncode == 0 and f"{role}: healthy" in health.stdout, health.stdout + health.stderr


def test_lag_dead_letters_and_no_worker_need_attention(service, redis_client):
    store = runtime().store
    store.advance_cursor(now_beijing() - timedelta(hours=2))
    letters = DeadLetterStore(redis_client, "t")
    unmapped = "warehouse_no 'WH9' has no entry in [warehouses] of mapping.toml"
    for i, (stage, error, api, code, said) in enumerate([
            ("transform", "TransformError", "", "", f"{unmapped} (add [warehouses.\"WH9\"]; mapped: WH1)"),
            ("transform", "TransformError", "", "", f"{unmapped} (add [warehouses.\"WH9\"]; mapped: WH1)"),
            ("transform", "TransformError", "", "", "details_list is empty: a stockout without lines cannot be…"),
            ("save", "InvalidRequestError", "bip", "999", "物料[SKU-X]不存在")]):
        raw = {"stockout_id": f"80{i}", "order_no": f"CK80{i}"}
        letter = DeadLetter(stockout_id=raw["stockout_id"], order_no=raw["order_no"], stage=stage, error_class=error,
                            api=api, code=code, api_message=said if api else "", message=said,
                            first_failed_at="x", last_failed_at="x", message_id=f"dlq-{i}", stockout=raw)
        letters.put(letter)
        publish_stockout.dead_letter_copy(letter)
    for i in range(4):
        publish_stockout({"stockout_id": f"70{i}"}, f"70{i}")
    publish_stockout({"stockout_id": "600"}, "600", queue=BACKFILL_QUEUE)
    job = JobStore(redis_client, "t").create(now_beijing() - timedelta(days=9), now_beijing() - timedelta(days=8),
                                             slice_s=3600, synced=0)
    # a call booked 100 s ahead on a slow limiter: no headroom left
    RateLimiter(redis_client, "bip", 0.01, prefix="t").acquire()
    env = {**service, "BIP_RATE_PER_SECOND": "0.01"}

    code, report = status_json(env, "--timeout", "0.5")
    assert code == 1
    assert report["lag_s"] > 7000
    assert report["queues"] == {"stockouts": 4, "stockouts.backfill": 1, "dead_letter": 4, "producer": 0}
    assert report["backlog"] == 5, "both stockout queues count, dead letters do not"
    assert [(b["job"]["id"], b["progress"], b["job"]["state"]) for b in report["backfills"]] == [(job.id, 0, "running")]
    assert report["workers"] == [] and report["synced"] == 0 and report["bip_token"] == {
        "cached": False, "expires_at": None, "expires_in_s": None, "renew_in_s": None}
    # by what to fix, not by stage and class: the unmapped warehouse and the empty lines apart
    assert [(g["reason"], g["count"]) for g in report["dead_letters_by_reason"]] == [
        (f"transform: {unmapped}", 2), ("transform: details_list is empty: a stockout without lines cannot be…", 1),
        ("save: [bip 999] 物料[SKU-X]不存在", 1)]
    assert report["dead_letters_by_reason"][0]["example"].startswith("800 (CK800): warehouse_no 'WH9'")
    bip = next(r for r in report["rate_limits"] if r["name"] == "bip")
    assert not bip["free_now"] and 90 < bip["next_slot_in_s"] <= 100
    problems = " | ".join(report["problems"])
    for words in ("no worker is consuming the stockouts queue", "nothing polls WDT", "lags", "4 dead letter(s)"):
        assert words in problems

    text = cli(env, "status", "--timeout", "0.5")
    assert text.returncode == 1 and "needs attention" in text.stdout and "2 × transform: warehouse_no" in text.stdout
    health = cli(env, "status", "--health", "worker", "--timeout", "0.5")
    assert health.returncode == 1 and "no process on" in health.stderr


def test_status_without_redis_says_so(service):
    down = cli({**service, "REDIS_URL": "redis://127.0.0.1:1/0"}, "status")
    assert down.returncode == 2 and "Redis" in down.stderr
