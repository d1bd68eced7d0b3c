"""A wrong clock is seen: a worker or beat process whose clock libfaketime shifts 15 minutes (LD_PRELOAD,
the host's clock untouched) is a `status` problem naming that clock after its first reading; polls that
keep reading an empty window are one too; a worker beyond BIP's token window pauses its stockouts instead
of dead-lettering them, and a worker with a right clock then saves each once."""
from __future__ import annotations

import json
import re

import pytest

from ops.processes import stop, wait_until
from producer.poll import poll_once
from shared.deadletters.store import DeadLetterStore
from shared.observe.clock import readings
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.faketime import needs_faketime, shifted
from tests.integration.faults import eligible, outcome, recent, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def status(env) -> tuple[int, dict]:
    done = cli(env, "status", "--json", "--timeout", "0.5")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def reading_of(role: str):
    return next((r for r in readings(runtime().redis, "t") if r.who.startswith(f"{role}@")), None)


@needs_faketime
@pytest.mark.parametrize("offset", ["-15m", "+15m"])
def test_a_beat_15_minutes_off_is_a_status_problem_naming_its_clock(sandbox, processes, offset):
    recent(sandbox, 5)
    poll_once(runtime(), publish_stockout)  # a right clock set the cursor; a beat behind it reads nothing new
    processes.env["POLL_INTERVAL_S"] = "1"
    processes.worker(concurrency=1)
    processes.beat(env=shifted(offset))
    reading = wait_until(lambda: reading_of("beat"), 60, message="the beat's clock reading")
    assert abs(abs(reading.skew_s) - 900) < 30 and (reading.skew_s < 0) == offset.startswith("-")
    code, report = status(processes.env)
    side = "behind" if offset.startswith("-") else "ahead of"
    assert code == 1
    assert any(re.search(rf"clock of beat@\S+ is 9\d\d s {side} Redis TIME", p) for p in report["problems"]), \
        report["problems"]
    if offset.startswith("-"):  # its windows are inverted: the polls "succeed" reading nothing
        wait_until(lambda: (runtime().store.last_poll_summary() or {}).get("idle_polls", 0) >= 3, 60,
                   message="three idle polls")
        code, report = status(processes.env)
        assert any("polls read nothing new from WDT" in p for p in report["problems"]), report["problems"]
    else:  # its WDT calls are refused, but WDT's answers carry WDT's clock (HTTP Date), which agrees with Redis
        # (the test's own poll, on a right clock, recorded as beat too: wait for the shifted beat's word)
        wait_until(lambda: abs((reading_of("beat") or reading).apis.get("wdt", 0)) > 800, 60,
                   message="a reading with WDT's clock")
        code, report = status(processes.env)
        assert any(re.search(r"clock of beat@.*\+9\d\d s against WDT's HTTP Date", p) for p in report["problems"]), \
            report["problems"]


@needs_faketime
@pytest.mark.invariant(7)
def test_a_worker_beyond_bips_token_window_pauses_and_a_right_clock_saves_each_once(sandbox, processes,
                                                                                    redis_client, tmp_path):
    stockouts = recent(sandbox, 8)
    want = eligible(stockouts)
    poll_once(runtime(), publish_stockout)
    skewed = processes.worker(concurrency=2, name="skewed", env=shifted("+15m"))
    log = tmp_path / "skewed.log"

    def paused() -> set[str]:
        return set(re.findall(r"stockout (\S+) waits: this host's clock is 9\d\d s ahead", log.read_text()))

    wait_until(lambda: want <= paused(), 60, message="every stockout paused by the clock")
    letters = DeadLetterStore(redis_client, "t")
    assert not letters.ids() and not saved(sandbox), "nothing dead-lettered, nothing sent"
    code, report = status(processes.env)
    assert code == 1 and any("clock of worker@" in p for p in report["problems"]), report["problems"]
    stop(skewed)
    processes.worker(concurrency=2, name="right")
    wait_until(lambda: want <= set(saved(sandbox)), message="saved by the worker with a right clock",
               progress=pipeline(sandbox, redis_client))
    assert max(saved(sandbox).values()) == 1 and not letters.ids()
    assert not any("clock of worker@" in p for p in status(processes.env)[1]["problems"])
    row = outcome("worker clock 15 min ahead (libfaketime): paused, then a worker with a right clock", sandbox, want,
                  letters)
    assert row["duplicates"] == 0 and row["lost"] == 0 and row["dead_lettered"] == 0
