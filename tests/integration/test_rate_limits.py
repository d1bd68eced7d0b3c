"""Rate limits and configuration errors against real worker processes and the sandbox over HTTP:
refusals are waits (no attempt, no dead letter), a wrong secret pauses instead of failing."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import timedelta

import pytest

from ops.processes import stop, wait_until
from producer.poll import poll_once
from shared.core.timeutil import now_beijing
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis import breaker
from shared.redis.ratelimit import RateLimiter
from shared.runtime import runtime
from tests.integration.conftest import reset_service_caches
from tests.integration.faults import eligible, outcome, saved

pytestmark = pytest.mark.integration

DEFAULT_CEILING = "20"  # Settings' default BIP_RATE_PER_SECOND


def status(env) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "ops.cli", "status", "--json"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.invariant(7)
@pytest.mark.parametrize(("limit", "count"), [(1, 14), (5, 50)])
def test_a_server_rate_limit_under_the_default_ceiling_dead_letters_nothing(
    sandbox, processes, redis_client, monkeypatch, limit, count
):
    # the sandbox silently allows `limit` saves in any second; we only know our default ceiling
    sandbox.set_rate_limits(bip_per_s=limit, window_s=1.0)
    processes.env["BIP_RATE_PER_SECOND"] = DEFAULT_CEILING
    monkeypatch.setenv("BIP_RATE_PER_SECOND", DEFAULT_CEILING)
    reset_service_caches()
    now = now_beijing()
    expected = eligible(sandbox.generate(count, start=now - timedelta(hours=2), end=now - timedelta(minutes=5)))
    processes.worker(concurrency=4)
    assert poll_once(runtime(), publish_stockout).published == len(expected)

    wait_until(lambda: expected <= set(saved(sandbox)), len(expected) / limit * 3 + 30,
               message=f"every stockout saved under a {limit}/s server limit")
    refused = sandbox.counters()["bip_rate_limited"]
    row = outcome(f"BIP allows {limit}/s (sliding window), our ceiling the default 20/s",
                  sandbox, expected, DeadLetterStore(redis_client, "t"))
    assert row["saved"] == len(expected) and row["duplicates"] == 0 and row["dead_lettered"] == 0
    assert refused >= 1, "the server limit was never reached: this test proves nothing"
    state = RateLimiter(redis_client, "bip", float(DEFAULT_CEILING), prefix="t").state()
    assert state.epoch >= 1 and state.rate_per_s < limit * 1.5, "the shared rate did not come down"
    _, report = status(processes.env)
    bip = next(r for r in report["rate_limits"] if r["name"] == "bip")
    assert bip["ceiling_per_s"] == float(DEFAULT_CEILING) and bip["rate_per_s"] < float(DEFAULT_CEILING)


def test_a_wrong_bip_secret_pauses_then_a_fix_and_restart_saves_everything(sandbox, processes, redis_client):
    now = now_beijing()
    expected = eligible(sandbox.generate(16, start=now - timedelta(hours=2), end=now - timedelta(minutes=5)))
    assert poll_once(runtime(), publish_stockout).published == len(expected)
    wrong = processes.worker(concurrency=2, env={"BIP_APP_SECRET": "not-the-secret"})

    wait_until(lambda: breaker.is_open(redis_client, "t", "bip"), 30, message="the breaker opens")
    code, report = status(processes.env)
    assert code == 1
    assert report["breaker"]["state"] in ("open", "half_open") and report["breaker"]["api"] == "bip"
    assert "BIP authentication" in report["breaker"]["cause"] and report["breaker"]["since"]
    assert any("BIP authentication" in p and "paused since" in p for p in report["problems"])
    assert "not-the-secret" not in json.dumps(report)
    assert "circuit breaker OPEN for bip" in processes.logs()
    # several probe intervals (BREAKER_PROBE_INTERVAL_S=2 in tests): still nothing saved, nothing lost
    tokens_refused = sandbox.counters()["bip_token_request_errors"]
    wait_until(lambda: sandbox.counters()["bip_token_request_errors"] >= tokens_refused + 2, 30,
               message="the breaker lets probes through")
    assert saved(sandbox) == Counter()
    assert DeadLetterStore(redis_client, "t").ids() == []
    # the probes are one per interval, not one per stockout
    assert sandbox.counters()["bip_token_request_errors"] < len(expected) * 2

    stop(wrong)
    processes.worker(concurrency=2, name="w2")  # the secret fixed, the worker restarted
    wait_until(lambda: expected <= set(saved(sandbox)), 60, message="every stockout saved after the fix")
    row = outcome("wrong BIP_APP_SECRET: paused (breaker), then fixed and the worker restarted", sandbox, expected,
                  DeadLetterStore(redis_client, "t"))
    assert row["saved"] == len(expected) and row["duplicates"] == 0 and row["dead_lettered"] == 0
    assert redis_client.hget("t:breaker", "state") == b"closed"
    code, report = status(processes.env)
    assert report["breaker"]["state"] == "closed"
    assert not any("paused" in p for p in report["problems"])


def test_a_poll_under_a_wdt_limit_waits_instead_of_failing_its_pages(sandbox, service, redis_client, monkeypatch):
    # a ceiling far above what WDT allows (1 call in any second): every page meets 1012 at first
    sandbox.set_rate_limits(wdt_per_min=60, window_s=1.0)
    monkeypatch.setenv("WDT_RATE_PER_MINUTE", "6000")
    monkeypatch.setenv("WDT_PAGE_SIZE", "5")
    reset_service_caches()
    now = now_beijing()
    expected = eligible(sandbox.generate(40, start=now - timedelta(hours=2), end=now - timedelta(minutes=5)))
    summary = poll_once(runtime(), publish_stockout)
    assert summary.published == len(expected)
    assert sandbox.counters()["wdt_rate_limited"] >= 1, "WDT's limit was never reached: this test proves nothing"
    state = RateLimiter(redis_client, "wdt", 100, prefix="t").state()
    assert state.epoch >= 1 and state.rate_per_s < 1.5


def test_a_wrong_wdt_secret_pauses_the_poll_and_names_the_secret(sandbox, service, redis_client, monkeypatch):
    now = now_beijing()
    sandbox.generate(10, start=now - timedelta(hours=2), end=now - timedelta(minutes=5))
    monkeypatch.setenv("WDT_APP_SECRET", "not-the-wdt-secret")
    reset_service_caches()
    with pytest.raises(Exception) as info:
        poll_once(runtime(), publish_stockout)
    assert "WDT authentication failed" in str(info.value) and "check WDT_APP_SECRET" in str(info.value)
    assert sandbox.counters()["wdt_calls"] == 1, "a configuration error is not retried"
    assert breaker.is_open(redis_client, "t", "wdt") and not breaker.is_open(redis_client, "t", "bip")
    code, report = status({**service, "WDT_APP_SECRET": "not-the-wdt-secret"})
    assert code == 1 and any("WDT_APP_SECRET" in p and "paused since" in p for p in report["problems"])
    assert "not-the-wdt-secret" not in json.dumps(report)

    monkeypatch.setenv("WDT_APP_SECRET", service["WDT_APP_SECRET"])  # fixed: the next poll is the probe
    reset_service_caches()
    assert poll_once(runtime(), publish_stockout).published > 0
    assert not breaker.is_open(redis_client, "t", "wdt")
