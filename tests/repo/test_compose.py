"""compose.yaml is valid Compose and runs only commands the image really has."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.prerequisites import prerequisite

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@prerequisite(SCHEMA.exists(), "the team's ../shared/schemas is not beside this checkout")
def test_compose_file_is_valid_against_the_compose_spec(compose):
    # the spec says draft-07 without the trailing "#", which jsonschema does not recognise by itself
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(compose)


def test_every_service_command_is_a_real_subcommand(compose):
    from ops.cli import main

    for name, service in compose["services"].items():
        if "build" not in service:  # Redis and Sentinel run their own image
            continue
        command = service["command"]
        assert command[0] in main.commands, f"service {name} runs unknown sub-command {command[0]}"
        options = {p.opts[0] for p in main.commands[command[0]].params} | {
            o for p in main.commands[command[0]].params for o in p.opts
        }
        for word in command[1:]:
            if word.startswith("--"):
                assert word in options, f"service {name}: {command[0]} has no option {word}"


def test_redis_persists_and_requires_a_password_kept_off_its_command_line(compose):
    redis = compose["services"]["redis"]
    config = compose["configs"][redis["configs"][0]["source"]]["content"]
    assert "appendonly yes" in config and "requirepass ${REDIS_PASSWORD:?" in config
    assert redis["command"] == ["redis-server", redis["configs"][0]["target"]]
    assert "REDIS_PASSWORD" not in str(redis["command"]) + str(redis["healthcheck"]) + str(redis.get("environment"))
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_workers_get_longer_than_a_task_to_finish_on_shutdown(compose):
    from shared.core.settings import Settings

    limit = Settings(_env_file=None).task_time_limit_s
    for name in ("worker", "demo-worker"):
        grace = compose["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) >= limit + 20, f"{name}: stop_grace_period {grace}"


def test_each_service_gets_only_its_own_variables(compose):
    services = compose["services"]
    assert set(services["flower"]["environment"]) == {
        "REDIS_URL", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD", "REDIS_PREFIX", "FLOWER_BASIC_AUTH",
        "FLOWER_TASKS_COLUMNS"}
    assert "env_file" not in services["flower"] and "env_file" not in services["redis"]
    for name in ("worker", "beat"):  # the API credentials come from sync.env, never Flower's login
        assert services[name]["env_file"] == ["sync.env"]
        assert "FLOWER_BASIC_AUTH" not in services[name]["environment"]
    assert services["sandbox"]["environment"] == {"SANDBOX_PUBLIC_URL": "http://sandbox:8700"}


def test_the_demo_brings_its_own_mapping_and_points_at_the_sandbox_by_name(compose):
    for name in ("demo-worker", "demo-beat"):
        service = compose["services"][name]
        assert service["profiles"] == ["demo"]
        assert "./ops/demo_data/mapping.toml:/config/mapping.toml:ro" in service["volumes"]
        assert service["environment"]["WDT_QIMEN_URL"].startswith("http://sandbox:8700/")
        assert service["environment"]["BIP_DISCOVERY_URL"].startswith("http://sandbox:8700/")
        assert service["environment"]["REDIS_PREFIX"] == "demo"


def test_ha_profile_has_a_replica_and_three_sentinels(compose):
    ha = {name for name, s in compose["services"].items() if "ha" in s.get("profiles", [])}
    assert ha == {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert "--replicaof" in compose["services"]["redis-replica"]["command"]
    assert "sentinel monitor mymaster redis 6379 2" in compose["configs"]["sentinel_conf"]["content"]


def test_flower_requires_basic_auth(compose):
    env = compose["services"]["flower"]["environment"]
    assert "FLOWER_BASIC_AUTH" in env and ":?" in env["FLOWER_BASIC_AUTH"]
    assert "--insecure" not in compose["services"]["flower"]["command"]


def test_flower_gets_no_api_secret_and_keeps_its_database_on_a_volume(compose):
    flower = compose["services"]["flower"]
    assert "env_file" not in flower  # sync.env holds WDT/BIP secrets and robot URLs
    assert not any(name.startswith(("WDT_", "BIP_", "ALERT_")) for name in flower["environment"])
    assert flower["environment"]["FLOWER_TASKS_COLUMNS"].endswith("name,kwargs,state,exception,received,worker}")
    db = flower["command"][flower["command"].index("--db") + 1]
    mounts = [v.split(":") for v in flower["volumes"]]
    assert any(name in compose["volumes"] and db.startswith(path + "/") for name, path in mounts)


def test_the_console_is_a_profile_of_its_own_on_the_hosts_loopback(compose):
    console = compose["services"]["console"]
    assert console["profiles"] == ["console"] and console["command"][0] == "console"
    assert console["ports"] == ["127.0.0.1:8800:8800"], "never published beyond the host unless told"
    assert console["environment"]["CONSOLE_USERS_FILE"] == "/config/console-users"
    assert "./console-users:/config/console-users:ro" in console["volumes"]
