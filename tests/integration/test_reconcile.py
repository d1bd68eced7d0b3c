"""`stockout-sync reconcile` against the sandbox: what BIP lost, holds twice, or never saw change."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.deadletters import DeadLetterStore
from shared.messages import publish_stockout
from shared.runtime import runtime
from shared.timeutil import format_wire, now_beijing

pytestmark = pytest.mark.integration


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def saved(sandbox) -> Counter:
    return Counter(r["data"]["defines!define1"] for r in sandbox.records())


def test_reconcile_finds_deleted_duplicated_and_changed_records_and_requeues_the_missing(
    sandbox, processes, redis_client
):
    now = now_beijing()
    good = sandbox.generate(40, start=now - timedelta(hours=2), end=now - timedelta(hours=1))
    bad = sandbox.generate(3, bad=1, start=now - timedelta(minutes=50), end=now - timedelta(minutes=40))
    eligible = {s["stockout_id"] for s in good + bad if s["status"] in ("95", "110")}
    (poison,) = sandbox.bad_ids
    processes.worker(concurrency=2)
    letters = DeadLetterStore(redis_client, "t")
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: set(saved(sandbox)) | set(letters.ids()) == eligible, 60, message="sync")

    early = ["--since", format_wire(now - timedelta(hours=3)), "--until", format_wire(now - timedelta(minutes=55))]
    clean = cli(processes.env, "reconcile", *early, "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    in_range = {s["stockout_id"] for s in good if s["status"] in ("95", "110")}
    assert report["eligible"] == report["in_bip"] == len(in_range)
    assert report["missing"] == report["duplicated"] == report["changed"] == []

    records = {r["data"]["defines!define1"]: r for r in sandbox.records()}
    deleted, doubled, edited = sorted(in_range)[:3]
    # forget_key: as if BIP's idempotency store no longer knew the key (see README, reconcile)
    sandbox.delete_record(records[deleted]["id"], forget_key=True)
    copy = sandbox.duplicate_record(records[doubled]["id"])
    time.sleep(1.1)  # WDT and BIP times have whole seconds: the edit must come later than the save
    sandbox.modify(edited)

    whole = [
        "--since",
        format_wire(now - timedelta(hours=3)),
        "--until",
        format_wire(now_beijing() + timedelta(minutes=1)),
    ]
    found = cli(processes.env, "reconcile", *whole, "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    missing = {m["stockout_id"]: m for m in report["missing"]}
    assert set(missing) == {deleted, poison}
    assert missing[deleted]["state"] == "done" and missing[deleted]["bip_id"] == records[deleted]["id"]
    assert missing[poison]["state"] == "dead_letter"
    assert [(d["stockout_id"], sorted(r["id"] for r in d["records"])) for d in report["duplicated"]] == [
        (doubled, sorted([records[doubled]["id"], copy["id"]]))
    ]
    assert [c["stockout_id"] for c in report["changed"]] == [edited]
    assert report["changed"][0]["modified"] > report["changed"][0]["bip_written"]
    assert report["requeued"] == []

    text = cli(processes.env, "reconcile", *whole)
    assert text.returncode == 1
    for words in (
        "missing in BIP: 2",
        "present twice in BIP: 1",
        "changed in WDT since synced: 1",
        deleted,
        doubled,
        edited,
        "dead letters",
    ):
        assert words in text.stdout, text.stdout

    requeued = cli(processes.env, "reconcile", *whole, "--requeue-missing")
    assert requeued.returncode == 1
    assert f"requeued 1: {deleted}" in requeued.stdout, requeued.stdout
    wait_until(lambda: saved(sandbox)[deleted] == 1, 30, message="the deleted record saved again")

    after = json.loads(cli(processes.env, "reconcile", *whole, "--json").stdout)
    assert [m["stockout_id"] for m in after["missing"]] == [poison], "dead letters are left to `dlq requeue`"
    assert [d["stockout_id"] for d in after["duplicated"]] == [doubled]
    assert [c["stockout_id"] for c in after["changed"]] == [edited]
    assert max(saved(sandbox).values()) == 2 and sandbox.counters()["duplicate_stockouts"] == 1  # only the one we made


def test_reconcile_refuses_a_backward_range_and_names_wdt_errors(service):
    backward = cli(service, "reconcile", "--since", "2026-10-02", "--until", "2026-10-01")
    assert backward.returncode == 2 and "--until must be after --since" in backward.stderr
    refused = cli(
        {**service, "WDT_APP_SECRET": "not-the-secret"}, "reconcile", "--since", "2026-10-01", "--until", "2026-10-02"
    )
    assert refused.returncode == 2 and "WDT_APP_SECRET" in refused.stderr
    assert "not-the-secret" not in refused.stderr + refused.stdout
