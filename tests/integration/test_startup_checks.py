"""Start-up refuses what can never work, in one line an operator can act on (the real CLI, as a
process): the variable as the environment spells it, its value unless it is a secret, exit 2 —
and `--help` works whatever the environment holds."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.redis.conn import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-value"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # a timeout well under the test's: a command that retries forever fails here instead of hanging
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True,
                          timeout=40)


def _statuses_1100(tmp_path: Path) -> str:
    path = tmp_path / "mapping.toml"
    text = (ROOT / "demo" / "mapping.toml").read_text(encoding="utf-8")
    path.write_text(text.replace("statuses = [95, 110]", "statuses = [95, 1100]"), encoding="utf-8")
    return str(path)


# (case, environment changes (a callable gets tmp_path), command, exit code, words of the one line)
CASES = [
    ("LOOKBACK_S not a number", {"LOOKBACK_S": "abc"}, ["worker"], 2, ["LOOKBACK_S", "'abc'", "integer"]),
    ("SLICE_DAYS under a minute", {"SLICE_DAYS": "0.00001"}, ["beat"], 2, ["SLICE_DAYS", "under a minute"]),
    ("INITIAL_SINCE not a Beijing time", {"INITIAL_SINCE": "yesterday"}, ["poll"], 2,
     ["INITIAL_SINCE", "'yesterday'", "yyyy-MM-dd HH:mm:ss"]),
    ("REDIS_URL garbage (worker)", {"REDIS_URL": "garbage"}, ["worker"], 2, ["REDIS_URL", "'garbage'"]),
    ("REDIS_URL garbage (poll)", {"REDIS_URL": "garbage"}, ["poll"], 2, ["REDIS_URL", "'garbage'"]),
    ("REDIS_URL host unknown", {"REDIS_URL": "redis://garbage:6379/0"}, ["worker"], 2,
     ["REDIS_URL='redis://garbage:6379/0'", "does not answer"]),
    ("REDIS_URL unreachable (poll)", lambda tmp: {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, ["poll"], 2,
     ["REDIS_URL='redis://127.0.0.1:", "does not answer"]),
    ("REDIS_URL password not shown", lambda tmp: {"REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"},
     ["dlq", "list"], 2, ["REDIS_URL='redis://:***@127.0.0.1:", "does not answer"]),
    ("BIP_APP_SECRET empty", {"BIP_APP_SECRET": ""}, ["worker"], 2, ["BIP_APP_SECRET is empty"]),
    ("BIP_APP_KEY empty", {"BIP_APP_KEY": ""}, ["worker"], 2, ["BIP_APP_KEY is empty"]),
    ("BIP_TENANT_ID empty", {"BIP_TENANT_ID": " "}, ["reconcile", "--since", "2026-01-01", "--until", "2026-01-02"], 2,
     ["BIP_TENANT_ID is empty"]),
    ("WDT_APP_SECRET empty", {"WDT_APP_SECRET": ""}, ["poll"], 2, ["WDT_APP_SECRET is empty"]),
    ("WDT_APP_KEY empty", {"WDT_APP_KEY": ""}, ["beat"], 2, ["WDT_APP_KEY is empty"]),
    ("WDT_SID empty", {"WDT_SID": ""}, ["preview", "CK-1"], 2, ["WDT_SID is empty"]),
    ("unknown status in the mapping", lambda tmp: {"MAPPING_FILE": _statuses_1100(tmp)}, ["worker"], 2,
     ["filters.statuses[1]", "not a WDT stockout status, got 1100"]),
    ("wrong WDT_APP_SECRET", {"WDT_APP_SECRET": SECRET}, ["poll"], 2,
     ["WDT refused the signature", "check WDT_APP_SECRET"]),
]


@pytest.mark.parametrize(("case", "changes", "command", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_a_setting_that_can_never_work_is_one_line_and_an_exit_code(service, tmp_path, case, changes, command, code,
                                                                    words):
    env = {**service, **(changes(tmp_path) if callable(changes) else changes)}
    result = cli(env, *command)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, f"{case}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: not one line:\n{result.stderr}"
    for word in words:
        assert word in lines[0], f"{case}: {word!r} not in {lines[0]!r}"
    assert SECRET not in result.stderr + result.stdout, f"{case}: a secret was printed"


@pytest.mark.parametrize("command", ["worker", "beat", "poll", "dlq"])
def test_help_works_whatever_the_environment_holds(service, command):
    result = cli({**service, "LOOKBACK_S": "abc", "REDIS_URL": "garbage", "BIP_APP_SECRET": ""}, command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and not result.stderr
