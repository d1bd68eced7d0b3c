"""`stockout-sync trace`: one stockout in each state it can be in, asked by order number or id, through
the real command against the sandbox, real Redis and a real worker."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.core.timeutil import now_beijing
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.faults import dead_lettered, wait_for_attempts
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def trace(env, name, *extra) -> tuple[int, dict | str]:
    done = cli(env, "trace", name, *extra)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, (json.loads(done.stdout) if "--json" in extra else done.stdout + done.stderr)


def eligible(sandbox, n=6, **kw):
    now = now_beijing()
    made = sandbox.generate(n, start=now - timedelta(hours=1), end=now - timedelta(minutes=1), **kw)
    return [s for s in made if s["status"] in ("95", "110")]


def test_never_seen_and_filtered_out(sandbox, service):
    code, t = trace(service, "CK-NO-SUCH", "--json")
    assert code == 1 and t["verdict"] == "never seen" and not t["wdt"]["found"]
    assert t["wdt"]["calls"] == 5, "the number alone is the whole answer where the gateway allows it: 5 statuses"
    code, text = trace(service, "CK-NO-SUCH")
    assert code == 1 and "CK-NO-SUCH: never seen: nothing here knows it, and WDT has no such number" in text

    now = now_beijing()
    cancelled = next(s for s in sandbox.generate(40, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
                     if s["status"] not in ("95", "110"))
    code, t = trace(service, cancelled["order_no"], "--json")
    assert code == 0 and t["verdict"] == "filtered out" and t["stockout_id"] == cancelled["stockout_id"]
    assert t["wdt"]["passes_filters"] is False and f"status {cancelled['status']}" in t["wdt"]["filter_reason"]


def test_queued_then_in_flight_then_done_with_the_bip_record(sandbox, processes, redis_client):
    stockout = eligible(sandbox)[0]
    poll_once(runtime(), publish_stockout)  # no worker yet: the messages wait
    code, t = trace(processes.env, stockout["order_no"], "--json")
    assert code == 0 and t["verdict"] == "queued" and t["mark"] == "queued"
    assert t["wdt"]["status"] == stockout["status"] and t["wdt"]["modified"] == stockout["modified"]
    assert t["wdt"]["passes_filters"] is True
    [task] = t["tasks"]
    assert task["state"] == "queued" and task["task_id"] and t["result_backend"] is None

    # BIP slower than the read timeout: the worker holds the lock, times out, waits to retry, tries
    # again… until the fault is lifted, so the stockout is in flight for as long as the test needs
    sandbox.set_faults(bip={"latency_ms": 4000})
    processes.env["MAX_ATTEMPTS"] = "30"
    processes.worker(concurrency=1)
    lock = f"t:lock:{stockout['stockout_id']}"
    wait_until(lambda: redis_client.get(lock), interval=0.05, message="a worker on the stockout",
               progress=pipeline(sandbox, redis_client))
    holder = redis_client.get(lock).decode()
    code, t = trace(processes.env, stockout["stockout_id"], "--json")  # by id this time
    assert t["verdict"] == "in flight", t
    assert t["order_no"] == stockout["order_no"], "the message names the order number, WDT the rest"
    assert t["wdt"]["found"] and t["mark"] == "queued"
    [task] = [x for x in t["tasks"] if x["task_id"] == holder]
    assert task["state"].startswith(("running", "waiting to retry", "reserved")), task
    sandbox.set_faults()

    wait_until(lambda: runtime().store.done(stockout["stockout_id"]), message="saved",
               progress=pipeline(sandbox, redis_client))
    code, t = trace(processes.env, stockout["order_no"], "--json")
    [record] = [r for r in sandbox.records() if r["data"]["defines!define1"] == stockout["stockout_id"]]
    assert t["verdict"] == "done" and t["bip_id"] == record["id"] and t["lock_holder"] == ""
    assert t["bip"]["id"] == record["id"] and len(t["bip"]["othOutRecords"]) == len(record["data"]["othOutRecords"])
    code, text = trace(processes.env, stockout["stockout_id"])  # by id, done: the order number from BIP
    assert code == 0 and "done" in text and record["id"] in text and stockout["order_no"] in text


def test_dead_lettered_with_its_history(sandbox, processes, redis_client):
    stockout = eligible(sandbox)[0]
    letters, _ = dead_lettered(sandbox, processes, redis_client, stockout)
    letters.requeue([stockout["stockout_id"]], publish_stockout)
    wait_for_attempts(letters, stockout["stockout_id"], 4, sandbox, redis_client)

    code, t = trace(processes.env, stockout["order_no"], "--json")
    assert code == 0 and t["verdict"] == "dead-lettered" and t["stockout_id"] == stockout["stockout_id"]
    letter = t["dead_letter"]
    assert letter["attempts"] == 4 and letter["http_status"] == 502
    assert [h["event"] for h in letter["history"]] == ["dead_lettered", "requeued", "dead_lettered"]
    assert any(x["state"] == "failed (dead-lettered)" and x["task_id"] == letter["task_id"] for x in t["tasks"])
    code, text = trace(processes.env, stockout["stockout_id"])
    assert code == 0 and "dead-lettered" in text and "history (3)" in text and stockout["order_no"] in text


def test_every_state_by_number_against_a_gateway_that_wants_a_window(sandbox, processes, redis_client):
    """The edition that refuses a stockout_no query without start_time/end_time (11000000): each verdict
    right, the calls counted, our own state found without WDT, and an order 200 days old found."""
    now = now_beijing()
    dead, saved, queued_, purged = eligible(sandbox, 12)[:4]
    [old] = [s for s in sandbox.generate(12, start=now - timedelta(days=200, hours=1), end=now - timedelta(days=200))
             if s["status"] in ("95", "110")][:1]
    sandbox.set_wdt_lookup(needs_window=True)
    runtime().store.mark_queued([s["stockout_id"] for s in (dead, saved, queued_, purged)])  # as the poll does
    letters, _ = dead_lettered(sandbox, processes, redis_client, dead)
    publish_stockout(purged, purged["stockout_id"])
    wait_until(lambda: letters.get(purged["stockout_id"]), message="second letter", progress=pipeline(sandbox))
    letters.purge([purged["stockout_id"]])  # deliberately: nothing may advise sending it again
    sandbox.set_faults()
    publish_stockout(saved, saved["stockout_id"])
    # saved and acknowledged: stopping the worker between the two (SIGTERM to its process group ends a
    # pool process at once) would leave the message unacked, and the trace would find it there
    wait_until(lambda: runtime().store.done(saved["stockout_id"]) and not redis_client.hlen("t:unacked"),
               message="saved and acknowledged", progress=pipeline(sandbox))
    processes.stop_all()
    publish_stockout(queued_, queued_["stockout_id"], queue="stockouts.backfill")

    code, t = trace(processes.env, saved["order_no"], "--json")
    assert code == 0 and t["verdict"] == "done" and t["stockout_id"] == saved["stockout_id"], t
    assert t["wdt"]["found"] and t["wdt"]["calls"] == 2, "refused alone, then found in the last 30 days"

    code, t = trace(processes.env, dead["order_no"], "--json")
    assert code == 0 and t["verdict"] == "dead-lettered" and "queued (published" not in t["mark_meaning"], t
    assert t["wdt"]["found"] and t["wdt"]["calls"] == 1, "asked first in the window the letter's times give"
    code, text = trace(processes.env, dead["order_no"])
    assert "dead-lettered" in text and "queued (published" not in text and "dlq requeue" in text
    for stockout, calls in ((saved, "2 calls"), (dead, "1 call")):  # preview: the same lookup, the same calls
        shown = cli(processes.env, "preview", stockout["order_no"])
        assert shown.returncode == 0 and f"({calls})" in shown.stderr, shown.stderr
        assert json.loads(shown.stdout)["data"]["defines!define1"] == stockout["stockout_id"]

    code, t = trace(processes.env, queued_["order_no"], "--json")
    assert code == 0 and t["verdict"] == "queued" and "stockouts.backfill" in t["summary"], t
    assert [task["queue"] for task in t["tasks"]] == ["stockouts.backfill"]

    code, t = trace(processes.env, purged["stockout_id"], "--json")
    assert code == 0 and t["verdict"] == "queued" and "proven not to have it" in t["summary"], t
    assert "publishes it again" not in t["summary"]

    code, t = trace(processes.env, old["order_no"], "--json")
    assert code == 0 and t["wdt"]["found"] and t["stockout_id"] == old["stockout_id"], t
    assert t["verdict"] == "never seen" and "backfill" in t["summary"] and 1 + 7 <= t["wdt"]["calls"] <= 1 + 8
    shown = cli(processes.env, "preview", old["order_no"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["data"]["defines!define1"] == old["stockout_id"]
    assert "calls)" in shown.stderr

    code, t = trace(processes.env, "CK-NO-SUCH", "--json")
    assert code == 1 and t["verdict"] == "never seen" and t["wdt"]["asked"] and not t["wdt"]["found"]
    assert t["wdt"]["calls"] == 1 + 13 + 4, "alone, 13 windows to a year back, the last 30 days in 4 other statuses"
    text = cli(processes.env, "trace", "CK-NO-SUCH")
    assert text.returncode == 1 and "WDT has no such number" in text.stdout
    assert "WDT has no such number" in text.stderr and "18 calls in all" in text.stderr, "stderr says as the table"
    missing = cli(processes.env, "preview", "CK-NO-SUCH")
    assert missing.returncode == 1 and "not found in WDT" in missing.stderr and "14 calls" in missing.stderr

    # WDT down: what we know is still there
    sandbox.set_faults(wdt={"http_500": 1.0})
    code, t = trace(processes.env, saved["stockout_id"], "--json")
    assert code == 0 and t["verdict"] == "done" and t["wdt"]["error"] and t["order_no"] == saved["order_no"], t
