"""The circuit breaker's shared state in Redis: the `Keys.breaker` contract, probes, closing."""
from __future__ import annotations

import time
import uuid

from ops.processes import wait_until
from shared.core import metrics
from shared.redis import breaker
from shared.redis.keys import Keys

P = f"tb{uuid.uuid4().hex[:8]}"


def fields(redis_client) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(Keys(P).breaker).items()}


def test_trip_opens_with_cause_api_and_since_then_close(redis_client):
    assert breaker.trip(redis_client, P, "BIP authentication failed — check BIP_APP_SECRET", "bip",
                        observer=metrics.BREAKER_OBSERVER) is True
    state = fields(redis_client)
    assert state["state"] == "open" and state["api"] == "bip" and "BIP authentication" in state["cause"]
    assert state["since"].endswith("+00:00")
    assert metrics.BREAKER_TRIPS.labels("bip")._value.get() >= 1
    earlier = "2026-01-01T00:00:00+00:00"  # as if opened long ago: a second trip must keep it
    redis_client.hset(Keys(P).breaker, "bip.since", earlier)
    assert breaker.trip(redis_client, P, "again", "bip") is False  # still open: `since` is kept
    assert fields(redis_client)["since"] == earlier and fields(redis_client)["bip.since"] == earlier
    assert breaker.close(redis_client, P, "bip", observer=metrics.BREAKER_OBSERVER) is True
    assert fields(redis_client)["state"] == "closed" and "cause" not in fields(redis_client)
    assert breaker.close(redis_client, P, "bip") is False


def test_the_summary_names_the_scope_that_opened_first(redis_client):
    breaker.trip(redis_client, P, "mapping unreadable", "mapping")
    redis_client.hset(Keys(P).breaker, "mapping.since", "2026-01-01T00:00:00+00:00")  # opened first
    breaker.trip(redis_client, P, "WDT sign check", "wdt")
    assert fields(redis_client)["api"] == "mapping"
    assert [o.api for o in breaker.opened(redis_client, P)] == ["mapping", "wdt"]
    assert [o.api for o in breaker.opened(redis_client, P, ["wdt", "bip"])] == ["wdt"]
    breaker.close(redis_client, P, "mapping")
    assert fields(redis_client)["api"] == "wdt" and fields(redis_client)["state"] == "open"


def test_one_probe_per_interval(redis_client):
    breaker.trip(redis_client, P, "bad secret", "bip", probe_interval_s=0.5)
    tripped = time.monotonic()
    assert breaker.try_probe(redis_client, P, "bip", probe_interval_s=0.5) is False  # not before the interval
    wait_until(lambda: breaker.try_probe(redis_client, P, "bip", probe_interval_s=0.5), 5, interval=0.02,
               message="the probe after the interval")
    assert time.monotonic() - tripped >= 0.45  # Redis's clock (ms) against ours
    assert fields(redis_client)["state"] == "half_open"
    assert breaker.try_probe(redis_client, P, "bip", probe_interval_s=0.5) is False  # one at a time


def test_a_fresh_process_probes_at_once_then_waits_its_turn(redis_client):
    breaker.trip(redis_client, P, "bad secret", "bip", probe_interval_s=60)
    fresh = breaker.Breaker(redis_client, P, ("bip", "mapping"), probe_interval_s=60)
    assert fresh.blocking() is None  # it is the probe
    blocked = fresh.blocking()
    assert blocked is not None and blocked.api == "bip" and blocked.cause == "bad secret"
    fresh.succeeded(("bip",))
    assert fresh.blocking() is None and fields(redis_client)["state"] == "closed"


def test_scopes_a_process_does_not_need_do_not_block_it(redis_client):
    breaker.trip(redis_client, P, "WDT sign check", "wdt", probe_interval_s=60)
    worker = breaker.Breaker(redis_client, P, ("bip", "mapping"), probe_interval_s=60)
    assert worker.blocking() is None and worker.blocking() is None
