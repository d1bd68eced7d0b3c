"""The commands an operator types, run as processes against the sandbox and real Redis."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from shared.deadletters import DeadLetter, DeadLetterStore
from shared.timeutil import format_wire, now_beijing
from tests.cli import cli
from worker.transform import resubmit_key

pytestmark = pytest.mark.integration


def test_preview_prints_the_bip_payload_or_the_mapping_error(sandbox, service):
    now = now_beijing()
    stockouts = sandbox.generate(10, bad=3, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    good = next(s for s in stockouts if s["stockout_id"] not in sandbox.bad_ids and s["status"] in ("95", "110"))
    shown = cli(service, "preview", good["order_no"])
    assert shown.returncode == 0, shown.stderr
    payload = json.loads(shown.stdout)["data"]
    assert payload["resubmitCheckKey"] == resubmit_key(good["stockout_id"])
    assert payload["defines!define1"] == good["stockout_id"]
    assert len(payload["othOutRecords"]) == len(good["details_list"])

    bad_id = next(i for i, why in sandbox.bad_reasons.items() if why == "unknown_warehouse")
    bad = next(s for s in stockouts if s["stockout_id"] == bad_id)
    refused = cli(service, "preview", bad["order_no"])
    assert refused.returncode == 1 and "WH-XX99" in refused.stderr

    missing = cli(service, "preview", "CK-NO-SUCH")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert not sandbox.records(), "preview never saves"


def test_backfill_records_a_job_that_a_poll_walks_and_show_list_cancel_report_it(sandbox, service, redis_client):
    now = now_beijing()
    old = sandbox.generate(250, start=now - timedelta(days=9), end=now - timedelta(days=2))
    eligible = {s["stockout_id"] for s in old if s["status"] in ("95", "110")}
    since, until = format_wire(now - timedelta(days=10)), format_wire(now - timedelta(days=1))
    args = ["backfill", "--since", since, "--until", until, "--json"]
    first = cli(service, *args)
    assert first.returncode == 0, first.stderr
    job = json.loads(first.stdout)
    assert job["state"] == "running" and job["cursor"] == ""
    assert redis_client.llen("t:stockouts.backfill") == 0, "recording a job publishes nothing by itself"
    # the producer walks it (the beat's backfill task; here one run by hand)
    from producer.backfill import backfill_once
    from producer.poll import OnQueue
    from shared.celery_app import BACKFILL_QUEUE
    from shared.messages import publish_stockout
    from shared.runtime import runtime

    backfill_once(runtime(), OnQueue(publish_stockout, BACKFILL_QUEUE), budget_s=30)
    shown = json.loads(cli(service, "backfill", "show", job["id"], "--json").stdout)
    assert shown["state"] == "done" and shown["published"] == len(eligible) and shown["progress"] == 1
    followed = cli(service, "backfill", "show", job["id"], "--follow")  # a finished job: the bar ends at once
    assert followed.returncode == 0 and "done" in followed.stdout and "100%" in followed.stdout
    missing = cli(service, "backfill", "--since", since)
    assert missing.returncode == 2 and "--until" in missing.stderr
    assert redis_client.llen("t:stockouts.backfill") == len(eligible)
    assert redis_client.llen("t:stockouts") == 0, "backfill messages never go to the live queue"
    # a second, overlapping job publishes nothing again
    second = json.loads(cli(service, *args).stdout)
    backfill_once(runtime(), OnQueue(publish_stockout, BACKFILL_QUEUE), budget_s=30)
    again = json.loads(cli(service, "backfill", "show", second["id"], "--json").stdout)
    assert again["published"] == 0 and again["already_queued"] == len(eligible)
    listed = cli(service, "backfill", "list")
    assert job["id"] in listed.stdout and second["id"] in listed.stdout
    third = json.loads(cli(service, *args).stdout)
    cancelled = cli(service, "backfill", "cancel", third["id"])
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert cli(service, "backfill", "show", "nope").returncode == 1


def test_commands_refuse_a_broken_mapping_with_file_key_and_value(service, tmp_path):
    broken = tmp_path / "mapping.toml"
    broken.write_text('[header]\norg = "ORG-EAST"\naccountOrg = "ORG-EAST"\nbustype = "A10001"\n\n'
                      '[warehouses."WH-SH01"]\nwarehous = "SH01"\n\n[material]\nfield = "spec_no"\n')
    env = {**service, "MAPPING_FILE": str(broken)}
    for command in ("worker", "beat", "poll"):
        done = cli(env, command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "mapping.toml" in done.stderr and "warehous" in done.stderr


def test_bad_configuration_is_named(service):
    done = cli({**service, "WDT_PAGE_SIZE": "500"}, "poll")
    assert done.returncode == 2 and "wdt_page_size" in done.stderr.lower() and "500" in done.stderr


def test_version_and_poll_as_one_json_object(sandbox, service, redis_client):
    version = cli(service, "--version")
    assert version.returncode == 0 and re.fullmatch(r"stockout-sync \d+\.\d+\.\d+\S*\n", version.stdout)

    now = now_beijing()
    stockouts = sandbox.generate(15, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    eligible = {s["stockout_id"] for s in stockouts if s["status"] in ("95", "110")}
    done = cli(service, "poll", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # the whole of stdout is the one object
    assert summary["published"] == len(eligible) == redis_client.llen("t:stockouts")
    assert summary["fetched"] >= len(eligible) and summary["window_start"] and summary["cursor"]
    # the same run for people: one line, the window's zone named
    again = cli(service, "poll")
    assert again.returncode == 0 and again.stdout.count("\n") == 1 and "(Beijing)" in again.stdout


def test_piped_output_is_not_wrapped_at_80_columns(service, redis_client):
    reason = "warehouse_no 'WH-FAR-AWAY-0001' is not in the mapping file's [warehouses] table; " * 2
    raw = {"stockout_id": "77001", "order_no": "CK77001"}
    DeadLetterStore(redis_client, "t").put(DeadLetter(
        stockout_id="77001", order_no="CK77001", stage="transform", error_class="TransformError", message=reason,
        first_failed_at="2026-01-15 09:30:00", last_failed_at="2026-01-15 09:30:00", message_id="m-77001",
        stockout=raw))
    listing = cli(service, "dlq", "list")  # stdout is a pipe here, as under `| grep` or in a log
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "77001" in line)
    assert reason.strip() in row, listing.stdout
    assert "dead letters: 1" in listing.stdout
