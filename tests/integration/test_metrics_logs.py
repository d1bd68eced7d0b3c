"""What operators scrape and read: the Prometheus exporters of worker and beat, and the log lines."""
from __future__ import annotations

import json
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ops.processes import stop, wait_until
from producer.poll import poll_once
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis import breaker
from shared.redis.conn import free_port
from shared.runtime import runtime
from tests.integration.faults import recent
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def test_worker_and_beat_export_what_they_did(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 30, bad=3)
    eligible = {s["stockout_id"] for s in stockouts if s["status"] in ("95", "110")}
    good = eligible - sandbox.bad_ids
    worker_port, beat_port = free_port(), free_port()
    processes.env.update(POLL_INTERVAL_S="1", METRICS_PORT=str(beat_port))
    processes.worker(concurrency=2, env={"METRICS_PORT": str(worker_port)})  # prefork: two children count
    processes.beat()

    def worker_done():
        samples = scrape(worker_port)
        saved = total(samples, "stockout_sync_saved_total")
        dead = total(samples, "stockout_sync_dead_lettered_total")
        return samples if saved == len(good) and dead == 3 else None

    wait_until(worker_done, interval=0.5, message="the worker's counters to show every stockout",
               progress=pipeline(sandbox, redis_client))
    # A scrape reads the children's files one after another, not at one instant: the one that showed
    # the last counter may have read the latency histogram just before that call's observation.
    # Everything counted by then was written before this second scrape began.
    samples = scrape(worker_port)
    assert len(sandbox.records()) == len(good)
    assert total(samples, "stockout_sync_saved_total", outcome="saved") == len(good)
    # two refused by the transform, one by BIP's validation (unknown material, code 999)
    assert total(samples, "stockout_sync_dead_lettered_total", stage="transform", error="TransformError") == 2
    assert total(samples, "stockout_sync_dead_lettered_total", stage="save", error="InvalidRequestError") == 1
    save = "/yonbip/scm/othoutrecord/single/save"
    assert total(samples, "stockout_sync_api_requests_total", api="bip", endpoint=save, code="ok") == len(good)
    assert total(samples, "stockout_sync_api_requests_total", api="bip", endpoint=save, code="999") == 1
    assert total(samples, "stockout_sync_api_request_duration_seconds_count", api="bip", endpoint=save) == len(good) + 1
    assert total(samples, "stockout_sync_rate_limit_wait_seconds_count", limiter="bip") == len(good) + 1
    assert total(samples, "stockout_sync_task_duration_seconds_count", outcome="saved") == len(good)
    assert not any(k in dict(labels) for _, labels in samples for k in ("stockout_id", "order_no"))

    beat = scrape(beat_port)
    assert total(beat, "stockout_sync_polls_total", outcome="ok") >= 1
    assert total(beat, "stockout_sync_published_total") == len(eligible)
    # polls every second re-read the window: what they read again is counted, not published again
    fetched = total(beat, "stockout_sync_fetched_total")
    assert fetched >= len(eligible)
    assert fetched == len(eligible) + total(beat, "stockout_sync_not_published_total")
    query = "wdt.stockout.order.query"
    assert total(beat, "stockout_sync_api_requests_total", api="wdt", endpoint=query, code="ok") >= 1
    assert total(beat, "stockout_sync_rate_limit_wait_seconds_count", limiter="wdt") >= 1
    # every WDT call is counted by what it was for: the polls' reads and the lookback's count checks
    by_purpose = {p: total(beat, "stockout_sync_wdt_calls_total", purpose=p) for p in ("poll", "lookback", "other")}
    assert by_purpose["poll"] >= 1 and by_purpose["lookback"] >= 1 and by_purpose["other"] == 0
    assert sum(by_purpose.values()) == total(beat, "stockout_sync_api_requests_total", api="wdt")
    assert any(n == "stockout_sync_backfill_jobs_running" for n, _ in beat), "the jobs gauge is exported"
    assert total(beat, "stockout_sync_saved_total") == 0, "each exporter shows its own processes"
    assert total(beat, "stockout_sync_poll_duration_seconds_count", outcome="ok") >= 1

    # the pipeline's state, read from Redis at the scrape: the same on every exporter
    for state in (scrape(worker_port), beat):
        assert total(state, "stockout_sync_state_up") == 1
        assert total(state, "stockout_sync_dead_letters", stage="transform") == 2
        assert total(state, "stockout_sync_dead_letters", stage="save") == 1
        assert total(state, "stockout_sync_queue_depth", queue="dead_letter") == 3
        assert total(state, "stockout_sync_queue_depth", queue="stockouts") == 0
        assert 0 < time.time() - total(state, "stockout_sync_last_save_timestamp_seconds") < 120
        assert 0 < time.time() - total(state, "stockout_sync_last_poll_success_timestamp_seconds") < 120
        assert 0 <= total(state, "stockout_sync_cursor_lag_seconds") < 600
        assert total(state, "stockout_sync_breaker_state", state="closed") == len(breaker.SCOPES)  # one per scope
        assert total(state, "stockout_sync_rate_limit_ceiling_per_second", limiter="bip") == 1000
        assert total(state, "stockout_sync_rate_limit_rate_per_second", limiter="bip") > 0

    # what the "no worker" / "no beat" rules look for
    assert total(scrape(worker_port), "stockout_sync_process_up", role="worker") == 1
    assert total(beat, "stockout_sync_process_up", role="beat") == 1
    assert total(beat, "stockout_sync_process_up", role="worker") == 0

    # text logs (the default) carry the same fields as `key=value` after the message
    text = (processes.logdir / "w1.log").read_text()
    saved_lines = [line for line in text.splitlines() if " outcome=saved " in line]
    assert len(saved_lines) == len(good)
    assert all(f"stockout_id={sid} " in text for sid in good) and " stage=save attempt=1 " in saved_lines[0]


def test_json_logs_are_one_object_per_line_with_the_event_fields(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 12, bad=2)
    eligible = {s["stockout_id"] for s in stockouts if s["status"] in ("95", "110")}
    worker = processes.worker(concurrency=2, env={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    letters = DeadLetterStore(redis_client, "t")
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: len(sandbox.records()) + len(letters.ids()) == len(eligible), message="sync",
               progress=pipeline(sandbox, redis_client))
    stop(worker)

    lines = (processes.logdir / "w1.log").read_text().splitlines()
    events = []
    for line in lines:
        try:
            doc = json.loads(line)  # every line, Celery's own included
        except ValueError:
            raise AssertionError(f"not JSON: {line!r}") from None
        assert {"ts", "level", "logger", "message"} <= doc.keys(), line
        events.append(doc)
    secrets = [v for k, v in sandbox.env().items() if "SECRET" in k]
    assert not any(secret in line for secret in secrets for line in lines)

    by_outcome: dict[str, list[dict]] = {}
    for doc in events:
        if doc["logger"] == "stockout_sync.worker" and "outcome" in doc:
            by_outcome.setdefault(doc["outcome"], []).append(doc)
    saved = by_outcome["saved"]
    assert {d["stockout_id"] for d in saved} == eligible - sandbox.bad_ids
    orders = {s["stockout_id"]: s["order_no"] for s in stockouts}
    for doc in saved:
        assert doc["order_no"] == orders[doc["stockout_id"]]
        assert doc["stage"] == "save" and doc["attempt"] == 1 and doc["bip_id"]
        assert len(doc["task_id"]) == 36 and isinstance(doc["duration_s"], float)
    dead = by_outcome["dead_letter"]
    assert {d["stockout_id"] for d in dead} == set(sandbox.bad_ids)
    assert all(d["level"] == "ERROR" and d["error"] and d["stage"] in ("transform", "save") for d in dead)
