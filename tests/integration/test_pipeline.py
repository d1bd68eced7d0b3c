"""The main job end to end: real Redis, real worker processes, the sandbox over HTTP, no mocks."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.core.timeutil import now_beijing
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.integration.conftest import reset_service_caches
from tests.integration.faults import eligible, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def settled(sandbox, expected: set[str], letters: DeadLetterStore):
    stored = set(saved(sandbox))
    dead = set(letters.ids())
    return expected <= stored | dead


def test_stockouts_reach_bip_exactly_once_and_bad_ones_fail_with_reason(sandbox, processes, redis_client, monkeypatch):
    # a lookback long enough that the second poll re-reads the whole first window
    monkeypatch.setenv("LOOKBACK_S", str(4 * 3600))
    reset_service_caches()
    now = now_beijing()
    stockouts = sandbox.generate(80, bad=3, start=now - timedelta(hours=3), end=now - timedelta(minutes=5))
    expected = eligible(stockouts)
    bad = set(sandbox.bad_ids)
    assert bad <= expected and len(bad) == 3
    processes.worker(concurrency=4)
    letters = DeadLetterStore(redis_client, "t")

    first = poll_once(runtime(), publish_stockout)
    assert first.published == len(expected)
    assert first.filtered_out == first.fetched - len(expected)
    wait_until(lambda: settled(sandbox, expected, letters), message="every stockout saved or dead-lettered",
               progress=pipeline(sandbox, redis_client))

    counts = saved(sandbox)
    # an unknown material is refused by BIP itself; the other two never leave the worker
    assert set(counts) == expected - bad
    assert max(counts.values()) == 1, "a stockout was saved twice"
    assert sandbox.counters()["duplicate_stockouts"] == 0
    assert set(letters.ids()) == bad
    for letter in letters.all():
        assert letter.stockout["stockout_id"] == letter.stockout_id, "the original stockout is kept whole"
        reason = sandbox.bad_reasons[letter.stockout_id]
        if "warehouse" in reason:
            assert "WH-XX99" in letter.message and letter.stage == "transform"
        elif "material" in reason:
            assert "SKU-GHOST" in letter.message and letter.stage == "save" and letter.code == "999"
            assert "SKU-GHOST = details_list[" in letter.message and ".spec_no" in letter.message
        else:
            assert "details_list" in letter.message and letter.stage == "transform"

    # the fields BIP got for one good stockout
    one = next(s for s in stockouts if s["stockout_id"] in counts and s["warehouse_no"] == "WH-BJ02")
    record = next(r["data"] for r in sandbox.records() if r["data"]["defines!define1"] == one["stockout_id"])
    assert record["warehouse"] == "BJ02" and record["org"] == "ORG-NORTH" and record["bustype"] == "A10001"
    assert record["vouchdate"] == one["consign_time"][:10]
    assert [line["product"] for line in record["othOutRecords"]] == [d["spec_no"] for d in one["details_list"]]

    # the lookback compares WDT's count with the one recorded: unchanged, so nothing is read again
    second = poll_once(runtime(), publish_stockout)
    assert second.published == 0 and second.lookback_probes == 1 and second.lookback_rereads == 0
    assert second.fetched == 0

    # a late write: a stockout WDT adds inside an already-read slice is found by the count and saved
    late_write = sandbox.generate(3, start=now - timedelta(hours=2), end=now - timedelta(hours=2))
    late_write_ids = eligible(late_write)
    found = poll_once(runtime(), publish_stockout)
    assert found.lookback_rereads >= 1 and found.published == len(late_write_ids)
    wait_until(lambda: late_write_ids <= set(saved(sandbox)), message="late writes saved",
               progress=pipeline(sandbox, redis_client))

    # a stockout that appears after the first poll is saved by the next one
    late = sandbox.generate(5, start=now_beijing() - timedelta(minutes=1), end=now_beijing() - timedelta(seconds=1))
    late_ids = eligible(late)
    third = poll_once(runtime(), publish_stockout)
    assert third.published == len(late_ids)
    wait_until(lambda: late_ids <= set(saved(sandbox)), message="late stockouts saved",
               progress=pipeline(sandbox, redis_client))
    assert max(saved(sandbox).values()) == 1


def test_beat_polls_on_schedule_and_the_cursor_moves(sandbox, processes, redis_client, monkeypatch):
    now = now_beijing()
    stockouts = sandbox.generate(30, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    expected = eligible(stockouts)
    processes.env["POLL_INTERVAL_S"] = "1"
    processes.worker(concurrency=2)
    processes.beat()
    wait_until(lambda: expected <= set(saved(sandbox)), message="beat-driven sync",
               progress=pipeline(sandbox, redis_client))
    store = runtime().store
    assert store.cursor() is not None and store.cursor() > now - timedelta(minutes=1)
    summary = store.last_poll_summary()
    assert summary is not None and not summary["skipped"]
    assert max(saved(sandbox).values()) == 1


def test_a_mapping_that_syncs_more_than_wdts_default_statuses_gets_them(
    sandbox, service, redis_client, tmp_path, monkeypatch
):
    from producer.poll import status_queries

    mapping = tmp_path / "mapping.toml"
    text = Path(service["MAPPING_FILE"]).read_text(encoding="utf-8")
    text = text.replace("statuses = [95, 110]", "statuses = [95, 110, 113]")
    mapping.write_text(text, encoding="utf-8")
    monkeypatch.setenv("MAPPING_FILE", str(mapping))
    reset_service_caches()
    assert status_queries(runtime().mapping) == [{"status": "95"}, {"status": "110"}, {"status": "113"}]
    assert status_queries(None) == [{}]
    now = now_beijing()
    stockouts = sandbox.generate(200, start=now - timedelta(hours=3), end=now - timedelta(minutes=5))
    wanted = {s["stockout_id"] for s in stockouts if s["status"] in ("95", "110", "113")}
    assert any(s["status"] == "113" for s in stockouts)
    summary = poll_once(runtime(), publish_stockout)
    assert summary.published == len(wanted), "113 异常发货 is not in WDT's default; it must be asked for"
    assert redis_client.llen("t:stockouts") == len(wanted)
