"""The commands an operator types, run as processes against the sandbox and real Redis."""
from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from producer.backfill.jobs import JobStore
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
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
    from producer.backfill.walk import backfill_once
    from producer.poll import OnQueue
    from shared.queue.publisher import publish_stockout
    from shared.redis.keys import BACKFILL_QUEUE
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


def test_backfill_guard_rails_and_one_json_document(sandbox, service, redis_client):
    import time

    from producer import heartbeat

    now = now_beijing()
    day = lambda n: (now - timedelta(days=n)).strftime("%Y-%m-%d")  # noqa: E731

    # a date alone as --until is the whole day; no beat has ever run here: the job waits, and says so
    whole = cli(service, "backfill", "--since", day(5), "--until", day(3))
    assert whole.returncode == 0 and "no live beat" in whole.stdout and "walks it now" not in whole.stdout
    [job] = JobStore(redis_client, "t").all()
    assert job.since == f"{day(5)} 00:00:00" and job.until == f"{day(3)} 23:59:59"

    # a range ending in the future is cut at now, with a warning; a live beat walks it now
    heartbeat.beat(redis_client, "t")
    ahead = cli(service, "backfill", "--since", day(2), "--until", format_wire(now + timedelta(days=30)), "--json")
    assert ahead.returncode == 0 and "in the future" in ahead.stderr and json.loads(ahead.stdout)["beat_alive"]
    cut = json.loads(ahead.stdout)["until"]
    assert format_wire(now - timedelta(seconds=1)) <= cut <= format_wire(now_beijing())
    assert cli(service, "backfill", "--since", format_wire(now + timedelta(days=1)),
               "--until", format_wire(now + timedelta(days=2))).returncode == 2

    # longer than BACKFILL_MAX_DAYS: asked first, --yes records it
    long = ["backfill", "--since", day(400), "--until", day(1)]
    refused = cli(service, *long, input="n\n")
    assert refused.returncode == 1 and "BACKFILL_MAX_DAYS=365" in refused.stderr
    assert len(JobStore(redis_client, "t").all()) == 2
    assert cli({**service, "BACKFILL_MAX_DAYS": "10"}, "backfill", "--since", day(20), "--until", day(1),
               input="n\n").returncode == 1
    assert cli(service, *long, "--yes").returncode == 0

    # a beat whose last poll is older than two intervals is not alive: backfill and status say so
    redis_client.set(heartbeat.key("t"), repr(time.time() - 1000))
    stale = cli(service, "backfill", "--since", day(5), "--until", day(4))
    assert re.search(r"no live beat \(its last poll: 1[67] min ago\)", stale.stdout), stale.stdout
    report = json.loads(cli(service, "status", "--json", "--timeout", "0.2").stdout)
    assert not report["beat_alive"] and 990 < report["beat_heartbeat_age_s"] < 1100
    assert any("no live beat" in p for p in report["problems"])

    listed = cli(service, "backfill", "list", "--json")
    jobs = json.loads(listed.stdout)  # one document: an array
    assert isinstance(jobs, list) and len(jobs) == 4 and all("progress" in j and "eta_s" in j for j in jobs)
    assert cli(service, "dlq", "list", "--json").stdout.strip() == "[]"


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


def test_demo_keep_leaves_a_run_to_try_the_next_commands_on(redis_url, tmp_path):
    """`demo --keep`: the Redis state stays, the sandbox's data is saved, and the commands it prints work
    against a sandbox started again from that data."""
    import os
    import shlex

    import requests

    from ops.processes import delete_prefix, start, stop, wait_until
    from sandbox.control import ROUTES

    env = {**os.environ, "REDIS_URL": redis_url, "COLUMNS": "400"}
    env.pop("REDIS_PREFIX", None)
    try:
        demo = cli(env, "demo", "--stockouts", "60", "--bad", "3", "--keep", "--prefix", "tdemo", timeout=300)
        assert demo.returncode == 0 and "demo passed" in demo.stdout, demo.stdout[-3000:] + demo.stderr[-3000:]
        state = re.search(r"--state (\S+sandbox\.json)", demo.stdout).group(1)
        env_file = re.search(r"set -a; \. (\S+demo\.env)", demo.stdout).group(1)
        port = re.search(r"sandbox --port (\d+)", demo.stdout).group(1)
        tried = re.findall(r"^  stockout-sync (\S+)", demo.stdout, re.M)
        assert {"sandbox", "status", "dlq", "trace", "preview", "reconcile", "worker"} <= set(tried)
        kept = json.loads(Path(state).read_text(encoding="utf-8"))
        assert len(kept["stockouts"]) >= 60 and kept["records"]
        from redis import Redis
        assert any(Redis.from_url(redis_url).scan_iter(match="tdemo:*", count=1000)), "the Redis state stayed"

        # the sandbox again, from its data; the service's settings from the file, as a shell would read them
        settings = dict(line.split("=", 1) for line in Path(env_file).read_text(encoding="utf-8").splitlines())
        run_env = {**env, **{k: shlex.split(v)[0] if v else "" for k, v in settings.items()}}
        proc = start(["sandbox", "--port", port, "--state", state], env, tmp_path / "sandbox.log")
        listing = wait_until(lambda: _get(requests, f"http://127.0.0.1:{port}/_sandbox/"), message="the sandbox again")
        assert {c["control"] for c in listing} == set(ROUTES)
        generate = next(c for c in listing if c["control"] == "generate")
        assert [a["name"] for a in generate["args"]] == ["count", "bad", "start", "end", "seed"] and generate["doc"]
        report = json.loads(cli(run_env, "status", "--json", "--timeout", "0.3").stdout)
        assert report["synced"] == len(kept["records"]) and report["dead_letters"] == 3
        dead = re.search(r"stockout-sync trace (\S+)", demo.stdout).group(1)
        traced = json.loads(cli(run_env, "trace", dead, "--json").stdout)
        assert traced["verdict"] == "dead-lettered" and traced["wdt"]["found"], traced
        stop(proc)
        assert len(json.loads(Path(state).read_text(encoding="utf-8"))["stockouts"]) == len(kept["stockouts"])
    finally:
        delete_prefix(redis_url, "tdemo")


def _get(requests, url):
    try:
        return requests.get(url, timeout=2).json()
    except requests.RequestException:
        return None
