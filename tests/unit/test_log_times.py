"""One time convention in every log line: ISO-8601 in Beijing time with its +08:00 offset, text and JSON
alike, whatever the host's zone; the business times among the fields carry the offset too."""
from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime

import pytest

from shared.core.logs import JsonFormatter, TextFormatter
from shared.core.timeutil import BEIJING

# 2026-01-15 01:30:00.250 UTC = 09:30:00.250 in Beijing
CREATED = datetime(2026, 1, 15, 9, 30, 0, 250000, tzinfo=BEIJING).timestamp()


@pytest.fixture(autouse=True)
def host_in_new_york(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def record(**fields) -> logging.LogRecord:
    rec = logging.LogRecord("stockout_sync.producer", logging.INFO, __file__, 1, "poll done", None, None)
    rec.created = CREATED
    for key, value in fields.items():
        setattr(rec, key, value)
    return rec


def test_json_and_text_lines_carry_the_same_marked_time():
    rec = record(window_start="2026-01-15 09:00:00", window_end="2026-01-15 09:29:58", fetched=3)
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["ts"] == "2026-01-15T09:30:00.250+08:00"
    assert doc["window_start"] == "2026-01-15T09:00:00+08:00" and doc["window_end"] == "2026-01-15T09:29:58+08:00"
    assert doc["fetched"] == 3

    line = TextFormatter().format(record(window_start="2026-01-15 09:00:00", cursor="2026-01-15 09:29:58"))
    assert line.startswith("2026-01-15T09:30:00.250+08:00 INFO stockout_sync.producer "), line
    assert "window_start=2026-01-15T09:00:00+08:00 cursor=2026-01-15T09:29:58+08:00" in line


def test_no_line_has_a_time_without_its_zone():
    lines = [TextFormatter().format(record(cursor="2026-01-15 09:29:58")),
             JsonFormatter().format(record(cursor="2026-01-15 09:29:58"))]
    for line in lines:
        times = re.findall(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2})?", line)
        assert times and all(t.endswith("+08:00") for t in times), line
