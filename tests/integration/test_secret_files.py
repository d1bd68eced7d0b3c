"""Secrets from files (`<NAME>_FILE`, as Docker secrets are mounted): a real worker whose BIP secret is
only in a file saves stockouts; a file that is missing, unreadable or clashing with the variable stops
start-up in one line naming the variable and the path, never the content."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.integration.faults import eligible, recent, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True,
                          timeout=40)


def test_a_worker_reads_its_bip_secret_from_a_file(sandbox, processes, redis_client, tmp_path):
    secret = tmp_path / "bip_app_secret"
    secret.write_text(processes.env["BIP_APP_SECRET"] + "\n", encoding="utf-8")  # as `echo … >` leaves it
    env = {k: v for k, v in processes.env.items() if k != "BIP_APP_SECRET"}
    processes.env = {**env, "BIP_APP_SECRET_FILE": str(secret)}
    stockouts = recent(sandbox, 10)
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: eligible(stockouts) <= set(saved(sandbox)), message="saved with the secret from its file",
               progress=pipeline(sandbox, redis_client))


@pytest.mark.parametrize("case", ["missing", "a directory", "both set", "empty"])
def test_a_secret_file_that_gives_no_secret_stops_start_up_naming_it(service, tmp_path, case):
    content = "file-s3cret-content"
    path = tmp_path / "wdt_app_secret"
    env = {k: v for k, v in service.items() if k != "WDT_APP_SECRET"}
    if case == "a directory":
        path = tmp_path
    elif case == "both set":
        path.write_text(content, encoding="utf-8")
        env["WDT_APP_SECRET"] = "also-set"
    elif case == "empty":
        path.write_text("\n", encoding="utf-8")
    env["WDT_APP_SECRET_FILE"] = str(path)
    result = cli(env, "beat")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"WDT_APP_SECRET_FILE={str(path)!r}" in lines[0]
    assert content not in result.stderr + result.stdout and "also-set" not in result.stderr
