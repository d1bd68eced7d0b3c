"""The reports of beat's daily reconcile: a Redis list (`Keys.reconcile_reports`), newest first,
the last REPORTS_KEPT kept. Each entry is one JSON object (producer.reconcile.run.Report dumped: at least
since, until, mismatches, missing, duplicated, changed, checks, finished_at; each list capped at
500 rows, `<list>_total` the full count); `status` shows the newest, and the alerts read them.
"""
from __future__ import annotations

import json
from typing import Any

import redis

from shared.redis.keys import Keys

REPORTS_KEPT = 30


def push_report(r: redis.Redis, prefix: str, report: dict[str, Any]) -> None:
    key = Keys(prefix).reconcile_reports
    pipe = r.pipeline(transaction=True)  # never a list left longer than REPORTS_KEPT
    pipe.lpush(key, json.dumps(report, ensure_ascii=False))
    pipe.ltrim(key, 0, REPORTS_KEPT - 1)
    pipe.execute()


def recent_reports(r: redis.Redis, prefix: str, count: int = REPORTS_KEPT) -> list[dict[str, Any]]:
    """Newest first; an entry that is not a JSON object is skipped, not fatal."""
    found = []
    for raw in r.lrange(Keys(prefix).reconcile_reports, 0, max(0, count - 1)):
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def last_report(r: redis.Redis, prefix: str) -> dict[str, Any] | None:
    newest = recent_reports(r, prefix, 1)
    return newest[0] if newest else None
