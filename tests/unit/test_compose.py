"""compose.yaml is valid Compose and runs only commands the image really has."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.mark.skipif(not SCHEMA.exists(), reason="the team's ../shared/schemas is not beside this checkout")
def test_compose_file_is_valid_against_the_compose_spec(compose):
    # the spec says draft-07 without the trailing "#", which jsonschema does not recognise by itself
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(compose)


def test_every_service_command_is_a_real_subcommand(compose):
    from ops.cli import main

    for name, service in compose["services"].items():
        if name == "redis":
            continue
        command = service["command"]
        assert command[0] in main.commands, f"service {name} runs unknown sub-command {command[0]}"
        options = {p.opts[0] for p in main.commands[command[0]].params} | {
            o for p in main.commands[command[0]].params for o in p.opts
        }
        for word in command[1:]:
            if word.startswith("--"):
                assert word in options, f"service {name}: {command[0]} has no option {word}"


def test_redis_persists_and_requires_a_password(compose):
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--requirepass" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_flower_requires_basic_auth(compose):
    env = compose["services"]["flower"]["environment"]
    assert "FLOWER_BASIC_AUTH" in env and ":?" in env["FLOWER_BASIC_AUTH"]
    assert "--insecure" not in compose["services"]["flower"]["command"]


def test_flower_gets_no_api_secret_and_keeps_its_database_on_a_volume(compose):
    flower = compose["services"]["flower"]
    assert flower["env_file"] == []  # the shared `.env` holds WDT/BIP secrets and robot URLs
    assert not any(name.startswith(("WDT_", "BIP_", "ALERT_")) for name in flower["environment"])
    assert flower["environment"]["FLOWER_TASKS_COLUMNS"].endswith("name,kwargs,state,exception,received,worker}")
    db = flower["command"][flower["command"].index("--db") + 1]
    mounts = [v.split(":") for v in flower["volumes"]]
    assert any(name in compose["volumes"] and db.startswith(path + "/") for name, path in mounts)


def test_dockerfile_copies_every_package(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("shared", "producer", "worker", "sandbox"):
        assert f"COPY {package} ./{package}" in dockerfile
