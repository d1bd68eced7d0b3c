"""The pieces of reconcile that need no remote system: marks with a key generation, the report's
exit code, the stored daily reports, and the daily schedule's setting."""
from __future__ import annotations

from datetime import datetime

import fakeredis
import pytest
from celery.schedules import crontab
from pydantic import ValidationError

from producer.reconcile.reports import REPORTS_KEPT, last_report, push_report, recent_reports
from producer.reconcile.run import STORED_ROWS, Check, Missing, Report, Unknown, previous_beijing_day, stored_form
from shared.core.settings import Settings
from shared.core.timeutil import BEIJING
from shared.queue.app import RECONCILE_TASK, celery_config
from shared.redis.keys import Keys
from shared.redis.state import Done, done_mark, mark_generation, parse_done, queued_mark


def test_done_marks_carry_the_generation_and_read_back():
    assert done_mark("2000000000000000001", "QTCK1") == "d|2000000000000000001|QTCK1"  # generation 0: as ever
    assert done_mark("2000000000000000001", "QTCK1", 2) == "d|2000000000000000001~2|QTCK1"
    assert parse_done("d|2000000000000000001~2|QT|CK") == Done("2000000000000000001", "QT|CK", 2)
    assert parse_done("d|2000000000000000001|QTCK1") == Done("2000000000000000001", "QTCK1", 0)
    assert parse_done(Done("1", "c", 3).mark()) == Done("1", "c", 3)
    assert queued_mark() == "q" and queued_mark(2) == "q|2"
    assert [mark_generation(m) for m in ("q", "q|2", "d|1~3|c", "d|1|c", None)] == [0, 2, 3, 0, 0]


def test_exit_code_a_verified_mismatch_wins_then_anything_unverifiable():
    report = Report(since="a", until="b")
    assert report.exit_code == 0 and report.mismatches == 0
    report.checks.duplicates = Check(state="unverifiable", why="list ignored the filter")
    assert report.exit_code == 3
    report.unknown.append(Unknown(stockout_id="1", state="done", reason="detail_failed", why="HTTP 502"))
    assert report.exit_code == 3 and report.mismatches == 0, "unknown is not a mismatch"
    report.missing.append(Missing(stockout_id="2", state="done", proof="detail 1002"))
    assert report.exit_code == 1 and report.model_dump()["mismatches"] == 1


def test_previous_beijing_day():
    since, until = previous_beijing_day(datetime(2026, 11, 29, 0, 30, tzinfo=BEIJING))
    assert since == datetime(2026, 11, 28, tzinfo=BEIJING)
    assert until == datetime(2026, 11, 28, 23, 59, 59, tzinfo=BEIJING)


def test_reports_newest_first_thirty_kept():
    r = fakeredis.FakeRedis()
    assert last_report(r, "p") is None
    for n in range(REPORTS_KEPT + 5):
        push_report(r, "p", {"since": f"day {n}", "mismatches": n})
    r.lpush(Keys("p").reconcile_reports, b"not json")
    assert r.llen(Keys("p").reconcile_reports) == REPORTS_KEPT + 1
    reports = recent_reports(r, "p")
    assert reports[0]["since"] == f"day {REPORTS_KEPT + 4}" and len(reports) == REPORTS_KEPT - 1
    push_report(r, "p", {"since": "newest"})
    assert last_report(r, "p") == {"since": "newest"} and r.llen(Keys("p").reconcile_reports) == REPORTS_KEPT


def test_daily_reconcile_is_scheduled_only_when_set():
    off = celery_config(Settings(_env_file=None))
    assert not any(e["task"] == RECONCILE_TASK for e in off["beat_schedule"].values())
    on = celery_config(Settings(_env_file=None, reconcile_daily_at="02:30"))
    (entry,) = [e for e in on["beat_schedule"].values() if e["task"] == RECONCILE_TASK]
    assert entry["schedule"] == crontab(hour=2, minute=30) and on["timezone"] == "Asia/Shanghai"
    assert on["task_routes"][RECONCILE_TASK] == {"queue": "producer"}
    assert entry["options"]["soft_time_limit"] > Settings(_env_file=None).task_time_limit_s


@pytest.mark.parametrize("value", ["25:00", "2:30", "02:60", "noon"])
def test_daily_time_must_be_hh_mm(value):
    with pytest.raises(ValidationError, match="RECONCILE_DAILY_AT"):
        Settings(_env_file=None, reconcile_daily_at=value)


def test_a_stored_report_keeps_every_count_but_caps_its_lists():
    report = Report(since="a", until="b")
    report.unknown = [Unknown(stockout_id=str(n), state="done", reason="over_budget", why="budget") for n in range(900)]
    report.missing = [Missing(stockout_id="1", state="unseen", proof="verified list")]
    stored = stored_form(report)
    assert len(stored["unknown"]) == STORED_ROWS and stored["unknown_total"] == 900
    assert stored["missing_total"] == 1 and stored["mismatches"] == 1
    assert stored["checks"]["missing"]["state"] == "verified"
