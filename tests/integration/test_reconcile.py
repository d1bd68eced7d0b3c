"""`stockout-sync reconcile` against the sandbox: what BIP lost, holds twice, or never saw change —
with BIP's list honouring its filter, ignoring it, or cutting its rows down, and with detail calls
failing. Records are deleted and entered twice through the sandbox's control API, as a person would
in BIP; BIP's memory of each resubmitCheckKey is left as it is (no forget_key)."""
from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from producer.reconcile.reports import recent_reports
from producer.reconcile.run import previous_beijing_day, run_daily
from shared.bip.idempotency import resubmit_key
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis.keys import Keys
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.faketime import needs_faketime, shifted
from tests.integration.faults import saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def sync(sandbox, processes, redis_client, count: int, bad: int = 0) -> tuple[set[str], list[str], list[dict]]:
    """`count` stockouts synced for real (worker + poll): the eligible ids, the range to reconcile, the stockouts."""
    now = now_beijing()
    made = sandbox.generate(count, bad=bad, start=now - timedelta(hours=2), end=now - timedelta(hours=1))
    eligible = {s["stockout_id"] for s in made if s["status"] in ("95", "110")}
    processes.worker(concurrency=2)
    letters = DeadLetterStore(redis_client, "t")
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: set(saved(sandbox)) | set(letters.ids()) == eligible, message="sync",
               progress=pipeline(sandbox, redis_client))
    window = ["--since", format_wire(now - timedelta(hours=3)), "--until", format_wire(now + timedelta(minutes=1))]
    return eligible, window, made


def run(env, window, *extra) -> tuple[int, dict]:
    done = cli(env, "reconcile", *window, "--json", *extra)
    assert done.returncode in (0, 1, 3), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def test_filtered_list_reports_deleted_twice_and_changed_and_requeue_recreates_only_the_deleted(
        sandbox, processes, redis_client):
    _, window, _ = sync(sandbox, processes, redis_client, 40, bad=1)
    (poison,) = sandbox.bad_ids
    code, clean = run(processes.env, window)
    assert code == 1 and [m["stockout_id"] for m in clean["missing"]] == [poison]  # the dead letter, proven absent
    assert clean["missing"][0]["state"] == "dead_letter"
    assert {name: c["state"] for name, c in clean["checks"].items()} == dict.fromkeys(
        ("missing", "duplicates", "changed"), "verified")
    assert clean["bip_calls"]["detail"] == 0, "a verified list needs no look-up by id"

    records = {r["data"]["defines!define1"]: r for r in sandbox.records()}
    deleted = sorted(records)[:2]
    doubled, edited = sorted(records)[2:4]
    for sid in deleted:
        sandbox.delete_record(records[sid]["id"])  # BIP keeps remembering its resubmitCheckKey
    copy = sandbox.duplicate_record(records[doubled]["id"])
    time.sleep(1.1)  # WDT and BIP times have whole seconds: the edit must come later than the save
    sandbox.modify(edited)

    code, report = run(processes.env, window)
    assert code == 1
    missing = {m["stockout_id"]: m for m in report["missing"]}
    assert set(missing) == {*deleted, poison}
    for sid in deleted:
        assert missing[sid]["state"] == "done" and missing[sid]["bip_id"] == records[sid]["id"]
        assert "1002" in missing[sid]["proof"]
    assert [(d["stockout_id"], sorted(r["id"] for r in d["records"])) for d in report["duplicated"]] == [
        (doubled, sorted([records[doubled]["id"], copy["id"]]))]
    assert [c["stockout_id"] for c in report["changed"]] == [edited]
    assert report["unknown"] == [] and report["mismatches"] == 5
    assert all(c["state"] == "verified" for c in report["checks"].values())

    text = cli(processes.env, "reconcile", *window)
    assert text.returncode == 1
    for words in ("missing in BIP: 3", "present twice in BIP: 1", "changed in WDT since synced: 1", "verified",
                  *deleted, doubled, edited, "dead letters"):
        assert words in text.stdout, text.stdout

    declined = cli(processes.env, "reconcile", *window, "--requeue-missing", input="n\n")
    assert "nothing requeued" in declined.stderr and "requeued" not in declined.stdout
    saves = sandbox.counters()["bip_saves"]
    requeued = cli(processes.env, "reconcile", *window, "--requeue-missing", "--yes")
    assert requeued.returncode == 1
    assert f"requeued 2: {' '.join(deleted)}" in requeued.stdout, requeued.stdout
    assert f"not requeued {poison}" in requeued.stdout
    wait_until(lambda: all(saved(sandbox)[sid] == 1 for sid in deleted), message="the deleted records re-created",
               progress=pipeline(sandbox, redis_client))
    time.sleep(0.5)
    assert sandbox.counters()["bip_saves"] == saves + 2, "exactly the deleted ones were saved again"
    keys = {r["data"]["defines!define1"]: r["resubmitCheckKey"] for r in sandbox.records()}
    assert [keys[sid] for sid in deleted] == [resubmit_key(sid, 1, processes.env["WDT_SID"]) for sid in deleted]

    code, after = run(processes.env, window)
    assert [m["stockout_id"] for m in after["missing"]] == [poison], "dead letters are left to `dlq requeue`"
    assert [d["stockout_id"] for d in after["duplicated"]] == [doubled]
    assert max(saved(sandbox).values()) == 2 and sandbox.counters()["duplicate_stockouts"] == 1  # only the one we made


@pytest.mark.invariant(9)
@pytest.mark.parametrize("mode", ["ignore_filters", "omit_fields"])
def test_an_unverifiable_list_is_not_trusted_and_presence_is_proven_by_id(sandbox, processes, redis_client, mode):
    eligible, window, _ = sync(sandbox, processes, redis_client, 30)
    records = {r["data"]["defines!define1"]: r for r in sandbox.records()}
    deleted = sorted(records)[:2]
    for sid in deleted:
        sandbox.delete_record(records[sid]["id"])
    sandbox.duplicate_record(records[sorted(records)[5]]["id"])
    sandbox.set_bip_list(**{mode: True})
    env = {**processes.env, "WDT_PAGE_SIZE": "10"}  # several pages, so an unfiltered list shows itself

    code, report = run(env, window)
    assert code == 1
    assert sorted(m["stockout_id"] for m in report["missing"]) == deleted
    assert report["duplicated"] == report["changed"] == report["unknown"] == []
    checks = report["checks"]
    assert checks["missing"]["state"] == "verified" and checks["changed"]["state"] == "verified"
    assert checks["duplicates"]["state"] == "unverifiable"
    assert ("ignored the defines!define1 filter" if mode == "ignore_filters" else "carry no defines!define1") in \
        checks["duplicates"]["why"]
    assert report["bip_calls"]["list"] == 1, "a list found untrustworthy is not asked again"
    assert report["bip_calls"]["detail"] == len(eligible)

    text = cli(env, "reconcile", *window)
    assert text.returncode == 1 and "present twice in BIP: NOT verified" in text.stdout, text.stdout

    saves = sandbox.counters()["bip_saves"]
    requeued = cli(env, "reconcile", *window, "--requeue-missing", "--yes")
    assert f"requeued 2: {' '.join(deleted)}" in requeued.stdout, requeued.stdout
    wait_until(lambda: all(saved(sandbox)[sid] == 1 for sid in deleted), message="the deleted records re-created",
               progress=pipeline(sandbox, redis_client))
    time.sleep(0.5)
    assert sandbox.counters()["bip_saves"] == saves + 2

    code, after = run(env, window)
    assert code == 3, "nothing proven wrong, but duplicates could not be checked"
    assert after["missing"] == [] and after["checks"]["duplicates"]["state"] == "unverifiable"


@pytest.mark.invariant(9)
def test_a_failing_detail_call_makes_the_stockout_unknown_never_missing(sandbox, processes, redis_client):
    eligible, window, _ = sync(sandbox, processes, redis_client, 12)
    records = {r["data"]["defines!define1"]: r for r in sandbox.records()}
    gone = sorted(records)[0]
    sandbox.delete_record(records[gone]["id"])
    sandbox.set_faults(bip={"detail_http_502": 1.0})

    code, report = run(processes.env, window)
    assert code == 3
    assert report["missing"] == []
    assert [(u["stockout_id"], u["reason"]) for u in report["unknown"]] == [(gone, "detail_failed")]
    assert "HTTP 502" in report["unknown"][0]["why"]
    assert report["checks"]["missing"]["state"] == "unverifiable"

    saves = sandbox.counters()["bip_saves"]
    requeued = cli(processes.env, "reconcile", *window, "--requeue-missing", "--yes")
    assert requeued.returncode == 3 and "nothing requeued" in requeued.stdout, requeued.stdout
    assert "unknown: could not be proven present or absent" in requeued.stdout and gone in requeued.stdout
    assert "1 unknown stockout(s) were not requeued" in requeued.stdout
    assert sandbox.counters()["bip_saves"] == saves

    # with the list ignoring filters every stockout needs a detail call: the budget caps them
    sandbox.set_faults()
    sandbox.set_bip_list(ignore_filters=True)
    env = {**processes.env, "WDT_PAGE_SIZE": "5"}
    before = sandbox.counters()["bip_detail_calls"]
    code, capped = run(env, window, "--max-calls", "4", "--sample")
    assert sandbox.counters()["bip_detail_calls"] - before == 4
    # the deleted one is proven missing only when the random sample picked it
    assert [m["stockout_id"] for m in capped["missing"]] in ([], [gone]) and code == (1 if capped["missing"] else 3)
    assert len(capped["unknown"]) + len(capped["missing"]) + capped["in_bip"] == len(eligible)
    assert {u["reason"] for u in capped["unknown"]} == {"over_budget"} and len(capped["unknown"]) >= len(eligible) - 4


def test_daily_run_stores_the_previous_day_for_status(sandbox, service, redis_client):
    since, until = previous_beijing_day()
    sandbox.generate(6, start=since + timedelta(hours=10), end=since + timedelta(hours=11))
    report = run_daily(runtime())
    assert (report.since, report.until) == (format_wire(since), format_wire(until))
    assert report.mismatches == report.eligible > 0  # never synced: every one proven absent by the verified list
    stored = recent_reports(redis_client, "t")
    assert redis_client.llen(Keys("t").reconcile_reports) == 1
    for field in ("since", "until", "mismatches", "missing", "duplicated", "changed", "checks", "finished_at"):
        assert field in stored[0]
    assert stored[0]["mismatches"] == report.mismatches and stored[0]["checks"]["missing"]["state"] == "verified"

    status = cli(service, "status", "--json", "--timeout", "0.2")
    assert json.loads(status.stdout)["last_reconcile"]["since"] == report.since
    text = cli(service, "status", "--timeout", "0.2")
    assert f"{report.mismatches} mismatches" in text.stdout, text.stdout


def test_reconcile_refuses_a_backward_range_and_names_wdt_errors(service):
    backward = cli(service, "reconcile", "--since", "2026-10-02", "--until", "2026-10-01")
    assert backward.returncode == 2 and "--until must be after --since" in backward.stderr
    refused = cli({**service, "WDT_APP_SECRET": "not-the-secret"}, "reconcile",
                  "--since", "2026-10-01", "--until", "2026-10-02")
    assert refused.returncode == 2 and "WDT_APP_SECRET" in refused.stderr
    assert "not-the-secret" not in refused.stdout + refused.stderr
    helped = cli(service, "reconcile", "--help")
    assert "Exit codes" in helped.stdout and "3 nothing proven wrong" in helped.stdout.replace("\n", " ")


def test_a_message_without_the_generation_still_recreates_under_the_marked_one(sandbox, processes, redis_client):
    """What `dlq requeue` of a re-created stockout sends: no generation in the message; the mark has it."""
    _, _, made = sync(sandbox, processes, redis_client, 6)
    records = {r["data"]["defines!define1"]: r for r in sandbox.records()}
    sid = sorted(records)[0]
    sandbox.delete_record(records[sid]["id"])
    store = runtime().store
    assert store.swap_mark(sid, store.states([sid])[sid], "q|1")  # as requeue-missing leaves it
    publish_stockout(next(s for s in made if s["stockout_id"] == sid), sid)
    wait_until(lambda: saved(sandbox)[sid] == 1, message="re-created", progress=pipeline(sandbox, redis_client))
    (new,) = [r for r in sandbox.records() if r["data"]["defines!define1"] == sid]
    assert new["resubmitCheckKey"] == resubmit_key(sid, 1, processes.env["WDT_SID"]) and new["id"] != records[sid]["id"]
    assert store.done(sid).generation == 1 and store.done(sid).bip_id == new["id"]


@pytest.mark.slow
@needs_faketime
def test_beat_runs_the_daily_reconcile_at_its_time(sandbox, processes, redis_client, tmp_path):
    """The real beat process, RECONCILE_DAILY_AT set to the coming minute: a report lands in Redis.
    Beat's clock (libfaketime) reads 15 s before that minute, so the test waits seconds, not a minute."""
    from ops.processes import start_beat

    now = now_beijing()
    at = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    ahead = (at - now).total_seconds() - 15  # beat's clock: 15 s before `at` (between 15 s behind and 45 s ahead)
    env = {**processes.env, "RECONCILE_DAILY_AT": at.strftime("%H:%M"), **shifted(f"{round(ahead):+d}")}
    proc = start_beat(env, schedule_file=tmp_path / "beat.schedule", log_path=tmp_path / "beat.log")
    processes.procs.append(proc)
    wait_until(lambda: redis_client.llen(Keys("t").reconcile_reports), 60, interval=0.5,
               message=f"a daily report at {at:%H:%M}")
    (report,) = recent_reports(redis_client, "t")
    assert (report["since"], report["until"]) == tuple(format_wire(t) for t in previous_beijing_day(at))
    assert report["checks"]["missing"]["state"] == "verified" and report["finished_at"]


def test_with_document_codes_a_stockout_without_a_done_mark_is_looked_up_by_code(
        sandbox, processes, redis_client, monkeypatch, tmp_path):
    from tests.integration.conftest import use_env

    mapping = tmp_path / "mapping.toml"
    text = Path(processes.env["MAPPING_FILE"]).read_text(encoding="utf-8")
    mapping.write_text(text.replace("send_code = false", "send_code = true"), encoding="utf-8")
    processes.env = {**processes.env, "MAPPING_FILE": str(mapping)}
    use_env(monkeypatch, processes.env)
    _, window, _ = sync(sandbox, processes, redis_client, 10)
    records = {r["data"]["defines!define1"]: r for r in sandbox.records()}
    kept, lost = sorted(records)[:2]
    store = runtime().store
    for sid in (kept, lost):  # as if the worker died between BIP's answer and the done mark
        assert store.swap_mark(sid, store.states([sid])[sid], "q")
    sandbox.delete_record(records[lost]["id"])
    sandbox.set_bip_list(ignore_filters=True)

    code, report = run({**processes.env, "WDT_PAGE_SIZE": "5"}, window)
    assert code == 1 and report["bip_calls"]["code"] == 2
    assert [(m["stockout_id"], m["state"]) for m in report["missing"]] == [(lost, "queued")]
    assert "code look-up verified" in report["missing"][0]["proof"]
    assert report["unmarked"] == 1 and report["unknown"] == []
    assert report["checks"]["missing"]["state"] == "verified"
    assert report["checks"]["duplicates"]["state"] == "unverifiable"
