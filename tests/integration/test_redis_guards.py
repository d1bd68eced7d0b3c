"""A Redis that may drop keys is refused: worker and beat stop at start-up on an evicting
maxmemory-policy (one line, exit 2) unless REDIS_ALLOW_EVICTION=true, `status` names it; a Redis that
refuses CONFIG (renamed, or denied by an ACL) is a warning, never a crash. Each server is the test's
own redis-server: the shared one is never reconfigured."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ops.processes import start_worker, stop, wait_for_consumer
from tests.integration.faults import RedisServer

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def own_redis(tmp_path, request):
    server = RedisServer(tmp_path, extra=request.param).start()
    yield server
    server.stop()


@pytest.mark.parametrize("own_redis", [("--maxmemory-policy", "allkeys-lru"), ("--maxmemory-policy", "volatile-lru"),
                                       ("--maxmemory-policy", "volatile-ttl", "--rename-command", "CONFIG", "")],
                         ids=["allkeys-lru", "volatile-lru", "CONFIG renamed"], indirect=True)
@pytest.mark.parametrize("command", ["worker", "beat"])
@pytest.mark.invariant(10)
def test_an_evicting_redis_stops_start_up_in_one_line(service, own_redis, command):
    policy = own_redis.extra[1]
    result = cli({**service, "REDIS_URL": own_redis.url}, command)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for word in ("maxmemory-policy", repr(policy), "noeviction", "REDIS_ALLOW_EVICTION=true"):
        assert word in lines[0]


@pytest.mark.parametrize("own_redis", [("--maxmemory-policy", "allkeys-lru")], indirect=True)
def test_status_names_an_evicting_policy_and_the_override_lets_a_worker_start(service, own_redis, tmp_path):
    env = {**service, "REDIS_URL": own_redis.url}
    result = cli(env, "status", "--json", "--timeout", "0.2")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["redis"]["policy"] == "allkeys-lru"
    assert any("maxmemory-policy is 'allkeys-lru'" in p and "noeviction" in p for p in report["problems"])
    env["REDIS_ALLOW_EVICTION"] = "true"
    proc = start_worker(env, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_for_consumer(own_redis.url, env["REDIS_PREFIX"], "stockouts", proc=proc)
        assert "REDIS_ALLOW_EVICTION=true" in (tmp_path / "w.log").read_text()  # the risk is logged
        report = json.loads(cli(env, "status", "--json", "--timeout", "0.2").stdout)
        assert not any("maxmemory-policy" in p for p in report["problems"])
        assert any("allkeys-lru" in w for w in report["warnings"])
    finally:
        stop(proc)


@pytest.mark.parametrize("own_redis", [("--rename-command", "CONFIG", "")], indirect=True)
def test_a_redis_refusing_config_is_a_warning(service, own_redis, tmp_path):
    env = {**service, "REDIS_URL": own_redis.url}
    report = json.loads(cli(env, "status", "--json", "--timeout", "0.2").stdout)
    assert report["redis"]["policy"] == "noeviction", "read from INFO"
    assert any("refused CONFIG" in w for w in report["warnings"])
    proc = start_worker(env, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_for_consumer(own_redis.url, env["REDIS_PREFIX"], "stockouts", proc=proc)
    finally:
        stop(proc)


ACL_NO_CONFIG_NO_INFO = ("--user", "ops", "on", ">pw", "~*", "&*", "+@all", "-config", "-info")


@pytest.mark.parametrize("own_redis", [ACL_NO_CONFIG_NO_INFO], indirect=True)
def test_a_redis_that_will_not_say_its_policy_is_a_warning_not_a_crash(service, own_redis):
    env = {**service, "REDIS_URL": own_redis.url.replace("redis://", "redis://ops:pw@")}
    result = cli(env, "status", "--json", "--timeout", "0.2")
    report = json.loads(result.stdout)
    assert report["redis"]["policy"] is None
    warnings = report["warnings"]
    assert any("would not tell its maxmemory-policy" in w and "no permissions" in w for w in warnings), warnings


@pytest.mark.parametrize("own_redis", [("--appendonly", "no", "--save", "")], indirect=True)
def test_redis_without_persistence_is_a_warning_in_status(service, own_redis):
    report = json.loads(cli({**service, "REDIS_URL": own_redis.url}, "status", "--json", "--timeout", "0.2").stdout)
    assert any("persistence is off" in w and "appendonly yes" in w for w in report["warnings"])
    assert not any("persistence" in p for p in report["problems"])
