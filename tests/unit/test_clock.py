"""Clock readings against Redis TIME: what counts as a problem, stale readings dropping out, the worker's
cached watch, the idle-poll rule and the alert condition (fakeredis: pure logic)."""
from __future__ import annotations

import json
import time

import fakeredis
import pytest

from producer.alerts.channels import Reply
from producer.alerts.watch import Watch
from shared.core.settings import Settings
from shared.observe import clock
from shared.redis.keys import Keys


@pytest.fixture
def r():
    return fakeredis.FakeRedis()


def put(r, who: str, skew_s: float, *, until: float | None = None) -> None:
    now = time.time()
    r.hset(Keys("t").clocks, who, json.dumps({"who": who, "skew_s": skew_s, "at": now,
                                              "until": now + 60 if until is None else until}))


def test_a_skew_over_a_minute_either_way_is_a_problem_naming_the_clock():
    assert clock.Reading(who="beat@h", skew_s=59.0, at=0).problem() is None
    behind = clock.Reading(who="beat@h", skew_s=-900.4, at=0).problem()
    ahead = clock.Reading(who="worker@w2", skew_s=61.0, at=0).problem()
    assert behind and "clock of beat@h is 900 s behind Redis TIME" in behind
    assert ahead and "clock of worker@w2 is 61 s ahead of Redis TIME" in ahead


def test_readings_are_recorded_per_process_and_stale_ones_drop_out(r):
    reading = clock.record(r, "t", "worker")
    assert abs(reading.skew_s) < 5 and reading.who.startswith("worker@")
    put(r, "beat@old", -900, until=time.time() - 1)
    put(r, "beat@now", -900)
    found = clock.readings(r, "t")
    assert [x.who for x in found] == ["beat@now", reading.who], "largest skew first, the stale one gone"
    assert not r.hexists(Keys("t").clocks, "beat@old")


def test_a_worker_measures_at_most_every_check_interval_and_names_the_token_window(r, monkeypatch):
    watch = clock.ClockWatch(r, "t", "worker")
    assert watch.beyond_token_window() is None
    first = watch.last
    assert watch.off_by() == first.skew_s and watch.last is first, "cached between checks"
    redis_time = r.time
    monkeypatch.setattr(r, "time", lambda: (redis_time()[0] - 420, redis_time()[1]))  # this host 7 min ahead
    watch._next = 0.0
    why = watch.beyond_token_window()
    assert why and "420 s ahead of Redis TIME, beyond BIP's token window (300 s)" in why


def test_an_apis_http_date_is_a_second_opinion_on_whose_clock_is_wrong():
    from shared.core import http

    now = time.time()
    http._note_server_clock("wdt", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 900)), now, now)
    assert abs(http.SERVER_SKEW_S["wdt"] + 900) <= 1.5
    http._note_server_clock("wdt", "not a date", now, now)  # an odd header changes nothing
    assert abs(http.SERVER_SKEW_S["wdt"] + 900) <= 1.5
    reading = clock.Reading(who="beat@h", skew_s=-900, at=0, apis={"wdt": -900.0})
    assert "-900 s against WDT's HTTP Date" in (reading.problem() or "")


def test_polls_that_keep_reading_an_empty_window_are_a_problem():
    assert clock.idle_problem(None) is None and clock.idle_problem({"idle_polls": 2}) is None
    assert "the last 3 polls read nothing new from WDT" in (clock.idle_problem({"idle_polls": 3}) or "")


class Told:
    def __init__(self) -> None:
        self.alerts: list = []

    def send(self, alert) -> list[Reply]:
        self.alerts.append(alert)
        return [Reply(channel="webhook", ok=True, attempts=1, detail="ok")]


def test_the_beat_alerts_on_a_wrong_clock_and_when_it_is_right_again(r):
    told = Told()
    watch = Watch(r, Settings(redis_prefix="t", alert_interval_s=300), told, lambda: ["stockouts", "producer"])
    put(r, "worker@w1", 900)
    [alert] = watch.clock(1000.0)
    assert alert.kind == "clock" and alert.status == "firing" and "worker@w1 is 900 s ahead" in alert.lines[0]
    assert watch.clock(1010.0) == [], "told once per ALERT_INTERVAL_S"
    put(r, "worker@w1", 0.2)
    [resolved] = watch.clock(1020.0)
    assert resolved.status == "resolved"
    r.set(Keys("t").poll_last, json.dumps({"idle_polls": 4}))
    [idle] = watch.clock(1030.0)
    assert idle.status == "firing" and "polls read nothing new" in idle.lines[0]
