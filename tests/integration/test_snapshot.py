"""One health snapshot: `status`, the scrape-time gauges and beat's alerts read the same Redis state
through `Snapshot.read` and judge it alike — fed one state, the three cannot disagree."""
from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from ops.status import gather
from producer.alerts.channels import Channel, Sender
from producer.alerts.watch import Watch
from shared.core.settings import Settings
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.observe.gauges import PipelineCollector
from shared.observe.snapshot import Snapshot
from shared.redis import breaker
from shared.redis.keys import Keys
from shared.runtime import runtime
from tests.integration.receivers import Receiver

pytestmark = pytest.mark.integration

MAPPING = {"since": "2026-12-04 10:00:00", "error": "warehouses.WH01: field required",
           "file_changed_at": "2026-12-04 09:59:58", "last_good_from": "2026-12-01 08:00:00",
           "last_good_fingerprint": "ab12"}


def _state(r, *, lag_s: float, broken: bool) -> None:
    k = Keys("t")
    r.set(k.cursor, format_wire(now_beijing() - timedelta(seconds=lag_s)))
    r.set(k.poll_last, json.dumps({"started_at": format_wire(now_beijing()), "duration_s": 0.5,
                                   "idle_polls": 3 if broken else 0}))
    r.set(k.beat_heartbeat, repr(time.time()))
    if broken:
        breaker.trip(r, "t", "BIP authentication failed — check BIP_APP_SECRET", "bip")
        r.set(k.mapping_invalid, json.dumps(MAPPING))
    else:
        breaker.close(r, "t", "bip")
        r.delete(k.mapping_invalid)


def _gauges(settings: Settings, r) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.name, tuple(s.labels.values())): s.value
            for family in PipelineCollector(settings, client=r).collect() for s in family.samples}


def _alerts(watch: Watch, now: float) -> set[tuple[str, str]]:
    return {(a.kind, a.status) for a in watch.round(now)}


def test_status_the_gauges_and_the_alerts_judge_one_state_alike(service, redis_client):
    settings = Settings(redis_prefix="t", status_max_lag_s=900, alert_interval_s=1)
    hook = Receiver(answer={"ok": True})
    try:
        watch = Watch(redis_client, settings, Sender([Channel("webhook", hook.url("/a"))], timeout_s=1.0,
                                                       budget_s=2.0, backoff_s=0.1), lambda: ["stockouts", "producer"])
        store = DeadLetterStore(redis_client, "t")
        for i in range(2):
            store.put(DeadLetter(stockout_id=f"90{i}", order_no=f"CK{i}", stage="transform",
                                 error_class="TransformError", message="warehouses: WH-XX99 unmapped",
                                 first_failed_at="2026-12-04 10:00:00", last_failed_at="2026-12-04 10:00:00"))

        _state(redis_client, lag_s=2000, broken=True)
        snap = Snapshot.read(redis_client, "t")
        assert snap.lagging(900) and [o.api for o in snap.paused()] == ["bip"] and snap.mapping_problem
        assert snap.dead_letters == 2 and snap.idle_polls == 3
        status = gather(runtime(), timeout_s=0.2)
        problems = "\n".join(status.problems)
        assert "the cursor lags" in problems and "circuit breaker open for bip" in problems
        assert "mapping file invalid" in problems and "2 dead letter(s)" in problems
        assert "the last 3 polls read nothing new" in problems
        gauges = _gauges(settings, redis_client)
        assert gauges[("stockout_sync_cursor_lag_seconds", ())] > 900
        assert gauges[("stockout_sync_breaker_state", ("bip", "open"))] == 1
        assert gauges[("stockout_sync_idle_polls", ())] == 3
        assert sum(v for (name, _), v in gauges.items() if name == "stockout_sync_dead_letters") == 2
        told = _alerts(watch, time.time())
        assert {("cursor_lag", "firing"), ("breaker", "firing"), ("mapping_invalid", "firing"),
                ("clock", "firing")} <= told, told
        assert status.lag_s is not None and abs(status.lag_s - snap.lag_s) < 5  # one reading, one lag

        _state(redis_client, lag_s=10, broken=False)
        status = gather(runtime(), timeout_s=0.2)
        problems = "\n".join(status.problems)
        assert "the cursor lags" not in problems and "circuit breaker" not in problems
        assert "mapping file invalid" not in problems and "polls read nothing new" not in problems
        gauges = _gauges(settings, redis_client)
        assert gauges[("stockout_sync_cursor_lag_seconds", ())] < 900
        assert gauges[("stockout_sync_breaker_state", ("bip", "closed"))] == 1
        told = _alerts(watch, time.time() + 5)
        assert {("cursor_lag", "resolved"), ("mapping_invalid", "resolved"), ("clock", "resolved")} <= told, told
    finally:
        hook.close()
