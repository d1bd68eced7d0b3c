"""A mapping file saved broken for a while: the workers go on with the last good mapping, say so in
`status` and once in the log, and nothing is dead-lettered — not even a stockout that needs what
only the new file has, which waits for the fix."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from ops.processes import wait_until
from shared.deadletters.store import DeadLetterStore
from shared.observe.snapshot import Snapshot
from shared.queue.publisher import publish_stockout
from tests.integration.faults import eligible, outcome, recent, saved

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GOOD = (ROOT / "demo" / "mapping.toml").read_text(encoding="utf-8")
# the new version maps a warehouse the old one does not know
NEW = GOOD + '\n[warehouses."WH-NEW"]\nwarehouse = "SH01"\n'
BROKEN = NEW.replace("[header]", "[headr]")  # the typo saved for a while
BROKEN_FOR_S = 10


@pytest.mark.invariant(7)
def test_a_broken_mapping_file_keeps_the_last_good_one_and_dead_letters_nothing(sandbox, processes, redis_client,
                                                                               tmp_path):
    mapping_file = tmp_path / "mapping.toml"
    mapping_file.write_text(GOOD, encoding="utf-8")
    processes.worker(concurrency=4, env={"MAPPING_FILE": str(mapping_file)})
    stockouts = [s for s in recent(sandbox, 100) if s["stockout_id"] in eligible([s])][:50]
    assert len(stockouts) == 50
    needs_new = {s["stockout_id"] for s in stockouts[:3]}
    for s in stockouts[:3]:
        s["warehouse_no"] = "WH-NEW"

    mapping_file.write_text(BROKEN, encoding="utf-8")
    broken_at = time.monotonic()
    publish_stockout.many((s, s["stockout_id"]) for s in stockouts)
    everyone = {s["stockout_id"] for s in stockouts}
    wait_until(lambda: everyone - needs_new <= set(saved(sandbox)), 30,
               message="the stockouts the last good mapping can express saved while the file is broken")
    problem = wait_until(lambda: Snapshot.read(redis_client, "t").mapping_problem, 10,
                         message="the problem recorded for status")
    assert "headr" in problem.error
    assert problem.line().startswith(f"mapping file invalid since {problem.since}: ")
    assert "using the last good mapping from" in problem.line()
    time.sleep(max(0.0, BROKEN_FOR_S - (time.monotonic() - broken_at)))
    letters = DeadLetterStore(redis_client, "t")
    assert letters.ids() == [], "nothing is dead-lettered while the file is broken"
    assert not needs_new & set(saved(sandbox)), "a stockout the old mapping cannot express waits"

    mapping_file.write_text(NEW, encoding="utf-8")
    wait_until(lambda: everyone <= set(saved(sandbox)), 30, message="all saved after the fix")
    wait_until(lambda: Snapshot.read(redis_client, "t").mapping_problem is None, 10, message="the problem cleared")
    logs = processes.logs()
    assert logs.count("mapping file invalid since") == 1, "one log line per change, not one per task"
    assert "is valid again" in logs
    for sid in needs_new:
        assert f"stockout {sid} waits for a valid mapping file" in logs
        saved_line = next(line for line in logs.splitlines() if f"stockout {sid} saved" in line)
        assert "attempt=1 " in saved_line, f"the wait used up attempts: {saved_line}"
    row = outcome(f"mapping file broken for {BROKEN_FOR_S} s", sandbox, everyone, letters)
    assert row["saved"] == 50 and row["dead_lettered"] == 0 and row["duplicates"] == 0 and row["lost"] == 0
