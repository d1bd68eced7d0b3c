"""Real Flower as `stockout-sync flower` runs it: behind basic auth (monitoring routes too), the stockout
and the reason on the task list, failures kept across a restart, the dead-letter queue's length with
workers known, a failed task's `dlq show` line, requeued failures off the Failed list, no API secret in
its environment, and retried tasks labelled as briefly as first ones."""
from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from ops.processes import stop, wait_until
from producer.poll import poll_once
from shared.core.timeutil import now_beijing
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis.conn import free_port
from shared.runtime import runtime
from tests.cli import cli, command

pytestmark = pytest.mark.integration
AUTH = ("operator", "flower-test-pass-Q7")
RECEIVER_FIELDS = ("receiver_name", "receiver_mobile", "receiver_address", "receiver_telno")


class Flower:
    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = {**env, "FLOWER_BASIC_AUTH": ":".join(AUTH)}
        self.db = tmp_path / "flower.db"
        self.log_path = tmp_path / "flower.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> Flower:
        port = free_port()
        with open(self.log_path, "ab") as log:  # flower has its own copy of the descriptor
            self.proc = subprocess.Popen(
                command("flower", f"--port={port}", f"--db={self.db}"),
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(f"{self.url}/healthcheck", auth=AUTH, timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, 90, message="flower listening")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)  # SIGTERM: Flower saves its state as it stops

    def tasks(self, **params) -> list[dict]:
        return list(requests.get(f"{self.url}/api/tasks", params=params, auth=AUTH, timeout=5).json().values())

    def get(self, path: str, **params) -> requests.Response:
        return requests.get(f"{self.url}{path}", params=params, auth=AUTH, timeout=10)

    def queue_lengths(self) -> dict[str, int]:
        return {q["name"]: q["messages"] for q in self.get("/api/queues/length").json()["active_queues"]}


@pytest.fixture
def flower(service, tmp_path):
    f = Flower(service, tmp_path).start()
    yield f
    f.stop()


def poison_one(sandbox, count: int = 6) -> dict:
    now = now_beijing()
    stockouts = sandbox.generate(count, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    poison = dict(next(s for s in stockouts if s["status"] in ("95", "110")))
    poison["warehouse_no"] = "WH-XX99"
    sandbox.add_stockouts([poison])
    return poison


def test_flower_refuses_to_start_without_auth(service):
    env = {k: v for k, v in service.items() if k != "FLOWER_BASIC_AUTH"}
    done = cli(env, "flower", "--port=1")
    assert done.returncode != 0 and "FLOWER_BASIC_AUTH" in done.stderr


def test_flower_shows_failures_and_dead_letter_length_behind_auth(sandbox, processes, flower):
    poison = poison_one(sandbox)
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)

    for path in ("/api/tasks", "/api/queues/length", "/metrics", "/healthcheck", "/tasks"):
        assert requests.get(f"{flower.url}{path}", timeout=5).status_code == 401, path
    metrics = requests.get(f"{flower.url}/metrics", auth=AUTH, timeout=5)
    assert metrics.status_code == 200 and "flower_" in metrics.text

    task = wait_until(lambda: flower.tasks(state="FAILURE"), 90, message="a FAILURE in flower")[0]
    assert task["name"] == "stockout_sync.sync_stockout"
    assert "TransformError" in task["exception"] and "WH-XX99" in task["exception"]
    assert poison["stockout_id"] in task["kwargs"] and poison["order_no"] in task["kwargs"]

    # the task list itself shows the stockout (kwargs) and the reason (exception) as columns
    page = requests.get(f"{flower.url}/tasks", auth=AUTH, timeout=5).text
    columns = [c.split('"', 1)[0] for c in page.split('<th data-column="')[1:]]
    assert columns == ["name", "kwargs", "state", "exception", "received", "worker"]

    def dead_letter_length():
        queues = requests.get(f"{flower.url}/api/queues/length", auth=AUTH, timeout=5).json()["active_queues"]
        return {q["name"]: q["messages"] for q in queues}.get("dead_letter")

    assert wait_until(dead_letter_length, 90, message="dead_letter length") == 1


def test_failures_survive_a_flower_restart(sandbox, processes, flower):
    poison = poison_one(sandbox)
    worker = processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: flower.tasks(state="FAILURE"), 90, message="a FAILURE in flower")
    stop(worker)  # nothing new can reach Flower: what it shows next comes from its database
    flower.stop()
    assert flower.db.exists() or list(flower.db.parent.glob("flower.db*"))

    flower.start()
    failed = flower.tasks(state="FAILURE")
    assert len(failed) == 1, failed
    assert poison["order_no"] in failed[0]["kwargs"] and "WH-XX99" in failed[0]["exception"]


def test_no_api_secret_in_flowers_environment(service, tmp_path):
    secrets = {
        "WDT_APP_SECRET": service["WDT_APP_SECRET"],
        "BIP_APP_SECRET": service["BIP_APP_SECRET"],
        "ALERT_DINGTALK_URL": "https://oapi.dingtalk.com/robot/send?access_token=flower-must-not-see-7e1c",
        "ALERT_DINGTALK_SECRET": "SECflower-must-not-see-4b2a",
    }
    flower = Flower({**service, **secrets}, tmp_path).start()
    try:
        assert flower.proc is not None
        environ = Path(f"/proc/{flower.proc.pid}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0].decode() for item in environ if item}
        blob = b"\0".join(environ)
        for name, value in secrets.items():
            assert name not in names and value.encode() not in blob, name
        assert {"REDIS_URL", "FLOWER_BASIC_AUTH", "FLOWER_TASKS_COLUMNS"} <= names
        assert not any(n.startswith(("WDT_", "BIP_", "ALERT_")) for n in names)
    finally:
        flower.stop()


def test_retried_tasks_show_no_receiver_data(sandbox, processes, flower):
    now = now_beijing()
    stockouts = sandbox.generate(20, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    # WDT may send receiver data (the sandbox masks it, as WDT does by default): give every stockout some
    eligible = [{**s, "receiver_name": "张三", "receiver_mobile": "13800138000", "receiver_address": "幸福路 8 号"}
                for s in stockouts if s["status"] in ("95", "110")]
    sandbox.add_stockouts(eligible)
    sandbox.set_faults(bip={"http_502": 0.4})
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)

    def all_done():
        tasks = flower.tasks()
        finished = [t for t in tasks if t["state"] in ("SUCCESS", "FAILURE")]
        return tasks if len(finished) >= len(eligible) else None

    tasks = wait_until(all_done, 90, message="every stockout finished in flower")
    retried = [t for t in tasks if (t.get("retries") or 0) > 0]
    assert retried, "no task was retried: the test proves nothing"
    for task in tasks:
        assert not any(f in (task.get("kwargs") or "") for f in (*RECEIVER_FIELDS, "13800138000")), task["kwargs"]
        assert task["kwargs"].startswith("{'order_no': '")


def test_the_dead_letter_queue_is_listed_with_workers_known_and_after_a_restart(sandbox, processes, service,
                                                                                 tmp_path, redis_client):
    poison_one(sandbox)
    processes.worker(concurrency=2)  # running before Flower starts: Flower asks it for its queues at once
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: redis_client.llen("t:dead_letter") == 1, 60, message="one letter on dead_letter")
    flower = Flower(service, tmp_path).start()
    try:
        for _ in range(2):  # and once more after a restart
            workers = wait_until(lambda: flower.get("/api/workers", refresh=1).json() or None, 30,
                                 message="Flower knows the worker")
            consumed = {q["name"] for info in workers.values() for q in info.get("active_queues") or []}
            assert "stockouts" in consumed and "dead_letter" not in consumed, consumed
            assert flower.queue_lengths().get("dead_letter") == 1
            broker = flower.get("/broker").text
            assert "dead_letter" in broker and "stockouts.backfill" in broker
            flower.stop()
            flower.start()
    finally:
        flower.stop()


def test_a_failed_task_names_its_letter_and_a_requeue_takes_it_off_the_failed_list(sandbox, processes, flower,
                                                                                     service, redis_client):
    poison = poison_one(sandbox)
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    failed = wait_until(lambda: [t for t in flower.tasks(state="FAILURE") if t.get("result")], 90,
                        message="a FAILURE with its dlq line")[0]
    hint = f"stockout-sync dlq show {poison['order_no']}"
    assert hint in failed["result"], failed
    assert failed["kwargs"].startswith(f"{{'order_no': '{poison['order_no']}'"), "the order number comes first"
    page = flower.get(f"/task/{failed['uuid']}").text
    assert hint in page

    done = cli(service, "dlq", "requeue", poison["stockout_id"])
    assert done.returncode == 0, done.stderr
    # the mapping is still wrong: the requeued stockout fails again, as a new task
    wait_until(lambda: any(t["uuid"] != failed["uuid"] for t in flower.tasks(state="FAILURE")), 90,
               message="the requeued stockout's own failure")
    old = wait_until(lambda: (t := flower.get(f"/api/task/info/{failed['uuid']}").json())["state"] == "REQUEUED"
                     and t, 30, message="the first failure marked requeued")
    assert "dlq requeue" in old["result"]
    assert failed["uuid"] not in {t["uuid"] for t in flower.tasks(state="FAILURE")}
    flower.stop()
    flower.start()
    assert flower.get(f"/api/task/info/{failed['uuid']}").json()["state"] == "REQUEUED"
    assert [t["uuid"] for t in flower.tasks(state="FAILURE")] != [failed["uuid"]]


def test_a_requeue_while_flower_is_down_is_caught_up_when_it_starts(sandbox, processes, flower, service,
                                                                    redis_client):
    poison = poison_one(sandbox)
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    failed = wait_until(lambda: flower.tasks(state="FAILURE"), 90, message="a FAILURE in flower")[0]
    flower.stop()
    assert cli(service, "dlq", "requeue", poison["stockout_id"]).returncode == 0
    letters = DeadLetterStore(redis_client, "t")
    wait_until(lambda: (x := letters.get(poison["stockout_id"])) and x.task_id != failed["uuid"], 90,
               message="the requeued stockout failed again, unseen by Flower")
    flower.start()
    old = flower.get(f"/api/task/info/{failed['uuid']}").json()
    assert old["state"] == "REQUEUED" and "dlq requeue" in old["result"], old
