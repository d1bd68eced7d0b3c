"""compose.yaml as a user runs it, without Docker (tests/integration/compose_local.py): each service of
the default and the demo profile started from its own command with exactly the environment compose
gives it, then the work done end to end and every health check passing. A wrong command, a variable
compose does not pass or an address another container cannot reach fails here first."""
from __future__ import annotations

import json
import secrets
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import requests

from ops.processes import wait_until
from sandbox import Sandbox, SandboxConfig, SandboxControl
from shared.core.timeutil import now_beijing
from tests.integration.compose_local import ROOT, ComposeError, LocalCompose, read_env_file
from tests.integration.sentinel_cluster import ready_to_fail_over

pytestmark = pytest.mark.integration

COMPOSE = ROOT / "compose.yaml"


def project(tmp_path: Path, sync_env: dict[str, str] | None = None) -> Path:
    """A compose project as docs/deploying.md makes it: .env, sync.env, mapping.toml, the checkout's files."""
    directory = tmp_path / "project"
    (directory / "ops" / "demo_data").mkdir(parents=True)
    shutil.copy(ROOT / "ops" / "demo_data" / "mapping.toml", directory / "ops" / "demo_data" / "mapping.toml")
    shutil.copy(ROOT / "ops" / "demo_data" / "mapping.toml", directory / "mapping.toml")
    (directory / ".env").write_text(
        f"REDIS_PASSWORD={secrets.token_hex(16)}\nFLOWER_BASIC_AUTH=operator:{secrets.token_hex(8)}\n")
    (directory / "sync.env").write_text("".join(f"{k}={v}\n" for k, v in (sync_env or {}).items()))
    return directory


def good_stockouts(statuses: dict[str, str], bad: set[str]) -> set[str]:
    return {sid for sid, status in statuses.items() if status in ("95", "110")} - bad


def saved_ids(records: list[dict]) -> list[str]:
    return [r["data"]["defines!define1"] for r in records]


def assert_all_healthy(compose: LocalCompose) -> None:
    for name in compose.names:
        for replica in compose.replicas[name]:
            if replica.healthcheck is None:
                continue
            result = compose.run_healthcheck(replica)
            assert result.returncode == 0, (f"{name}[{replica.index}] health check {replica.healthcheck} exited "
                                            f"{result.returncode}: {result.stdout}{result.stderr}")


def test_default_profile_runs_service_by_service_and_syncs(tmp_path):
    # The real APIs' stand-in, outside compose, at an address sync.env names as a user's would.
    with Sandbox(SandboxConfig()) as apis:
        now = now_beijing()
        apis.generate(40, bad=2, start=now - timedelta(hours=2), end=now - timedelta(minutes=2))
        env = {**apis.env(), "POLL_INTERVAL_S": "2", "SETTLE_S": "0", "WORKER_CONCURRENCY": "2",
               "BIP_RATE_PER_SECOND": "200", "WDT_RATE_PER_MINUTE": "6000", "LOG_LEVEL": "INFO"}
        compose = LocalCompose(COMPOSE, project(tmp_path, env), tmp_path / "run")
        assert compose.names == ["redis", "beat", "flower", "worker"]
        assert len(compose.replicas["worker"]) == 2
        # nothing but what compose passes: Flower gets the broker and its login, Redis nothing
        assert set(compose.replicas["flower"][0].env) - {"PATH", "HOME", "LANG", *compose.image_env} == {
            "REDIS_URL", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD", "REDIS_PREFIX", "FLOWER_BASIC_AUTH",
            "FLOWER_TASKS_COLUMNS"}
        assert "REDIS_PASSWORD" not in compose.replicas["redis"][0].env
        assert compose.env["REDIS_PASSWORD"] not in " ".join(compose.replicas["redis"][0].argv)
        try:
            compose.start()
            good = good_stockouts(apis.wdt.statuses(), apis.bad_ids)
            wait_until(lambda: (compose.check_running(), good <= set(saved_ids(apis.records())))[1], 90,
                       message=f"{len(good)} stockouts saved through the default profile")
            assert len(saved_ids(apis.records())) == len(good), "a stockout was saved twice"
            for name in ("worker", "beat", "redis"):
                compose.wait_healthy(name, 60)
            assert_all_healthy(compose)
            flower = f"http://{compose.address('flower', 5555)}"
            wait_until(lambda: _answers(flower), 60, message="Flower answering")
            assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401
            user, password = compose.env["FLOWER_BASIC_AUTH"].split(":", 1)
            assert requests.get(f"{flower}/api/workers", auth=(user, password), timeout=10).status_code == 200
        finally:
            compose.stop()


def test_demo_profile_runs_end_to_end(tmp_path):
    compose = LocalCompose(COMPOSE, project(tmp_path), tmp_path / "run", profiles=["demo"],
                           services=["sandbox", "demo-worker", "demo-beat"])
    assert compose.names == ["redis", "sandbox", "demo-beat", "demo-worker"]
    try:
        compose.start()
        sandbox = SandboxControl(f"http://{compose.address('sandbox', 8700)}")
        good = good_stockouts(sandbox.statuses(), sandbox.bad_ids)
        assert len(good) > 400
        wait_until(lambda: (compose.check_running(), good <= set(saved_ids(sandbox.records())))[1], 150,
                   interval=1, message=f"the demo's {len(good)} good stockouts saved")
        assert len(saved_ids(sandbox.records())) == len(good), "a stockout was saved twice"
        assert sandbox.counters()["duplicate_stockouts"] == 0
        # BIP discovery named the sandbox by its compose address, not the 127.0.0.1 of its own container
        client = redis.Redis.from_url(compose.replicas["demo-worker"][0].env["REDIS_URL"])
        gateway = json.loads(client.get("demo:bip:gateway"))["gateway_url"]
        client.close()
        assert gateway == f"http://{compose.address('sandbox', 8700)}", gateway
        assert_all_healthy(compose)
    finally:
        compose.stop()


def test_a_missing_variable_fails_as_compose_would(tmp_path):
    directory = project(tmp_path)
    (directory / ".env").write_text("FLOWER_BASIC_AUTH=operator:x\n")
    with pytest.raises(ComposeError, match="REDIS_PASSWORD"):
        LocalCompose(COMPOSE, directory, tmp_path / "run")


def test_a_wrong_command_or_an_unreachable_address_is_caught(tmp_path):
    directory = project(tmp_path)
    broken = tmp_path / "compose.yaml"
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    text = COMPOSE.read_text()
    broken.write_text(text.replace('command: ["beat", "--schedule-file"', 'command: ["beats", "--schedule-file"', 1))
    compose = LocalCompose(broken, directory, tmp_path / "run1", services=["beat"])
    try:
        compose.start()
        with pytest.raises(AssertionError, match="exited"):
            wait_until(lambda: compose.check_running(), 30)
    finally:
        compose.stop()
    # An address no container can reach: beat refuses to start, naming the variable (start-up checks).
    creds = {"WDT_APP_KEY": "k", "WDT_APP_SECRET": "s", "WDT_SID": "sid", "BIP_TENANT_ID": "t",
             "BIP_APP_KEY": "k", "BIP_APP_SECRET": "s"}
    directory = project(tmp_path / "p2", creds)
    broken.write_text(text.replace("@redis:6379/0", "@redis-main:6379/0"))
    compose = LocalCompose(broken, directory, tmp_path / "run2", services=["beat"])
    try:
        compose.start()
        with pytest.raises(AssertionError, match=r"exited with 2(.|\n)*REDIS_URL"):
            wait_until(lambda: compose.check_running(), 30)
    finally:
        compose.stop()


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
        return True
    except requests.RequestException:
        time.sleep(0.5)
        return False


@pytest.mark.slow
def test_ha_profile_runs_and_the_sync_goes_on_after_the_master_dies(tmp_path):
    with Sandbox(SandboxConfig()) as apis:
        now = now_beijing()
        apis.generate(30, start=now - timedelta(hours=2), end=now - timedelta(minutes=2))
        # stockouts written late (modified before the cursor) are found by the lookback's count check
        env = {**apis.env(), "POLL_INTERVAL_S": "2", "SETTLE_S": "0", "WORKER_CONCURRENCY": "2",
               "BIP_RATE_PER_SECOND": "200", "WDT_RATE_PER_MINUTE": "6000", "LOOKBACK_CHECK_S": "0"}
        directory = project(tmp_path, env)
        password = compose_env(directory)["REDIS_PASSWORD"]
        with open(directory / ".env", "a") as dotenv:  # docs/deploying.md's `ha` lines
            dotenv.write(f"SYNC_REDIS_URL=sentinel://:{password}@sentinel-1:26379;sentinel://sentinel-2:26379;"
                         f"sentinel://sentinel-3:26379/0\nREDIS_SENTINEL_MASTER=mymaster\n"
                         f"REDIS_SENTINEL_PASSWORD={password}\n")
        compose = LocalCompose(COMPOSE, directory, tmp_path / "run", profiles=["ha"],
                               services=["redis-replica", "sentinel-1", "sentinel-2", "sentinel-3", "worker", "beat"])
        try:
            compose.start()
            good = good_stockouts(apis.wdt.statuses(), apis.bad_ids)
            wait_until(lambda: (compose.check_running(), good <= set(saved_ids(apis.records())))[1], 90,
                       message="stockouts saved through the Sentinels' master")
            compose.wait_healthy("redis-replica", 60)
            assert_all_healthy(compose)
            # killed before every Sentinel knows the replica, the master has no one to fail over to
            wait_until(lambda: sentinels_know_a_good_replica(compose, password), 60,
                       message="every Sentinel knowing the replica")

            master = compose.replicas["redis"][0]
            master.proc.kill()  # SIGKILL: the Sentinels (down after 5 s) promote redis-replica
            master.proc.wait(10)
            master.proc = None
            later = apis.generate(20, start=now_beijing() - timedelta(seconds=30), end=now_beijing())
            good |= {s["stockout_id"] for s in later if s["status"] in ("95", "110")}
            wait_until(lambda: (compose.check_running(), good <= set(saved_ids(apis.records())))[1], 90,
                       interval=1, message="stockouts that appeared after the master died, saved")
            assert len(saved_ids(apis.records())) == len(good), "a stockout was saved twice"
            for name in ("worker", "beat"):
                compose.wait_healthy(name, 60)
        finally:
            compose.stop()


def sentinels_know_a_good_replica(compose: LocalCompose, password: str) -> bool:
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        host, port = compose.address(name, 26379).rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), password=password, decode_responses=True,
                         socket_timeout=2) as sentinel:
            try:
                if not ready_to_fail_over(sentinel):
                    return False
            except redis.RedisError:
                return False
    return True


def compose_env(directory: Path) -> dict[str, str]:
    return read_env_file(directory / ".env")
