"""The test run's own guard: it never flushes a database holding keys that no test wrote."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from shared.redis.conn import EmbeddedRedis
from tests.conftest import ROOT, for_this_worker

PROBE = "def test_probe(redis_client):\n    redis_client.set('t:probe', 1)\n"


def _pytest(tmp_path, url: str) -> subprocess.CompletedProcess:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    # not one of this run's xdist workers: the URL is used as given
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")} | {"TEST_REDIS_URL": url}
    # the suite's own conftest, loaded as a plugin for a test file outside the tree
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(tmp_path), str(probe)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_database_with_foreign_keys_is_refused_and_left_alone(tmp_path):
    server = EmbeddedRedis(tmp_path)
    try:
        client = redis.Redis.from_url(server.url)
        client.set("sos:cursor", "2026-11-29 10:00:00")  # the service's, say
        client.set("t:left-over", 1)
        refused = _pytest(tmp_path, server.url)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        said = refused.stdout + refused.stderr
        assert "refusing to flush" in said and "sos:cursor" in said
        assert client.get("sos:cursor") is not None and client.get("t:left-over") is not None

        client.delete("sos:cursor")  # only test keys now: flushed and used
        ran = _pytest(tmp_path, server.url)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert client.keys("*") == [b"t:probe"]
        client.close()
    finally:
        server.close()


def test_an_unreachable_test_redis_url_is_named(tmp_path):
    done = _pytest(tmp_path, "redis://127.0.0.1:1/0")
    assert done.returncode != 0 and "TEST_REDIS_URL" in done.stdout + done.stderr


@pytest.mark.parametrize(("url", "worker", "expected"), [
    ("redis://127.0.0.1:6379/13", None, "redis://127.0.0.1:6379/13"),
    ("redis://127.0.0.1:6379/13", "gw0", "redis://127.0.0.1:6379/13"),
    ("redis://127.0.0.1:6379/13", "gw1", "redis://127.0.0.1:6379/14"),
    ("rediss://:pw@h:6380", "gw2", "rediss://:pw@h:6380/2"),
])
def test_each_xdist_worker_gets_a_database_of_its_own(url, worker, expected):
    assert for_this_worker(url, worker) == expected


def test_a_parallel_run_needs_a_database_number_it_can_shift():
    with pytest.raises(pytest.UsageError, match="redis://"):
        for_this_worker("unix:///tmp/redis.sock?db=1", "gw1")
