"""The commands an operator types, run as processes against the sandbox and real Redis."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from shared.timeutil import format_wire, now_beijing
from worker.transform import resubmit_key

pytestmark = pytest.mark.integration


def cli(env, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, **kw)


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


def test_backfill_publishes_a_past_range_once_and_keeps_the_cursor(sandbox, service, redis_client):
    now = now_beijing()
    old = sandbox.generate(250, start=now - timedelta(days=9), end=now - timedelta(days=2))
    eligible = {s["stockout_id"] for s in old if s["status"] in ("95", "110")}
    args = [
        "backfill",
        "--since",
        format_wire(now - timedelta(days=10)),
        "--until",
        format_wire(now - timedelta(days=1)),
    ]
    first = cli(service, *args)
    assert first.returncode == 0, first.stderr
    assert f"published {len(eligible)}" in first.stdout
    # published, nobody consumes yet: the messages wait on the queue
    assert redis_client.llen("t:stockouts") == len(eligible)
    again = cli(service, *args)
    assert "published 0" in again.stdout and f"already queued {len(eligible)}" in again.stdout
    assert redis_client.llen("t:stockouts") == len(eligible)
    assert redis_client.get("t:cursor") is None, "a backfill never moves the cursor"


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
