"""Real Flower, with basic auth, shows a failed task with its exception and the dead-letter queue length."""
from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest
import requests

from ops.processes import stop, wait_until
from producer.poll import poll_once
from shared.messages import publish_stockout
from shared.redis_conn import free_port
from shared.runtime import runtime
from shared.timeutil import now_beijing
from tests.cli import cli, command

pytestmark = pytest.mark.integration
AUTH = ("operator", "flower-test-pass-Q7")


@pytest.fixture
def flower(service, tmp_path):
    port = free_port()
    env = {**service, "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    with open(tmp_path / "flower.log", "wb") as log:  # flower has its own copy of the descriptor
        proc = subprocess.Popen(command("flower", f"--port={port}"), env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(f"{url}/healthcheck", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, 90, message="flower listening")
    yield url
    stop(proc)


def test_flower_refuses_to_start_without_auth(service):
    env = {k: v for k, v in service.items() if k != "FLOWER_BASIC_AUTH"}
    done = cli(env, "flower", "--port=1")
    assert done.returncode != 0 and "FLOWER_BASIC_AUTH" in done.stderr


def test_flower_shows_failures_and_dead_letter_length_behind_auth(sandbox, processes, flower):
    now = now_beijing()
    stockouts = sandbox.generate(6, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    poison = dict(next(s for s in stockouts if s["status"] in ("95", "110")))
    poison["warehouse_no"] = "WH-XX99"
    sandbox.add_stockouts([poison])
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)

    assert requests.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    assert requests.get(f"{flower}/api/queues/length", timeout=5).status_code == 401

    def failed():
        tasks = requests.get(f"{flower}/api/tasks", params={"state": "FAILURE"}, auth=AUTH, timeout=5).json()
        return list(tasks.values())

    task = wait_until(failed, 90, message="a FAILURE in flower")[0]
    assert task["name"] == "stockout_sync.sync_stockout"
    assert "TransformError" in task["exception"] and "WH-XX99" in task["exception"]
    assert poison["stockout_id"] in task["kwargs"] and poison["order_no"] in task["kwargs"]

    def dead_letter_length():
        queues = requests.get(f"{flower}/api/queues/length", auth=AUTH, timeout=5).json()["active_queues"]
        return {q["name"]: q["messages"] for q in queues}.get("dead_letter")

    assert wait_until(dead_letter_length, 90, message="dead_letter length") == 1
