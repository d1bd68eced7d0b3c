"""Secrets never leak: the pipeline runs with known, unusual secrets through success, retries and dead
letters, over Redis with a password and TLS; then every log line, Redis key and value, dead letter,
Flower API answer and exception text is searched for them."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest
import requests

from ops.demo import sandbox_env
from ops.processes import stop, wait_until
from producer.poll import poll_once
from sandbox import Sandbox, SandboxConfig
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis.conn import connect, free_port
from shared.runtime import runtime
from tests.cli import cli, command
from tests.integration.conftest import Processes, use_env
from tests.integration.faults import RedisServer, eligible, recent, saved
from tests.integration.receivers import Receiver
from tests.prerequisites import prerequisite
from tests.progress import pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WDT_SECRET = "wdtSECRET-q7Zx-41kk"
BIP_SECRET = "bipSECRET-m3Wv-88jj"
REDIS_PASSWORD = "redisPASS-t5Yu-02hh"
DINGTALK_TOKEN = "dingTOKEN-r8Kp-63ff"
DINGTALK_SECRET = "SECding-w2Qe-19bb"
SECRETS = (WDT_SECRET, BIP_SECRET, REDIS_PASSWORD, DINGTALK_TOKEN, DINGTALK_SECRET)
FLOWER_AUTH = ("operator", "flower-pass-Q7")


def redis_dump(client) -> str:
    """Every key and value, with message bodies (base64 in kombu's envelope) decoded."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        parts.append(key.decode(errors="replace"))
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [v for kv in client.hgetall(key).items() for v in kv]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = []
        for value in values:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            parts.append(text)
            try:
                envelope = json.loads(text)
                if isinstance(envelope, dict) and "body" in envelope:
                    parts.append(base64.b64decode(envelope["body"]).decode(errors="replace"))
                elif (
                    isinstance(envelope, list) and envelope and isinstance(envelope[0], dict) and "body" in envelope[0]
                ):
                    parts.append(base64.b64decode(envelope[0]["body"]).decode(errors="replace"))
            except (ValueError, TypeError):
                pass
    return "\n".join(parts)


@pytest.mark.invariant(4)
@prerequisite(bool(shutil.which("openssl")), "openssl is needed to make the test server's certificate")
def test_no_secret_anywhere_after_success_retries_and_dead_letters(tmp_path, monkeypatch, redis_url):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD, tls=True).start()
    sandbox = Sandbox(SandboxConfig(wdt_app_secret=WDT_SECRET, bip_app_secret=BIP_SECRET)).start()
    env = sandbox_env(sandbox, redis_url=server.url, prefix="t", redis_ca_certs=str(server.ca), max_attempts=6,
                      log_level="DEBUG")
    # beat tells a robot about the dead letters: its token and signing secret must not leak either
    robot = Receiver()
    env.update(ALERT_DINGTALK_URL=robot.url(f"/robot/send?access_token={DINGTALK_TOKEN}"),
               ALERT_DINGTALK_SECRET=DINGTALK_SECRET, ALERT_CHECK_INTERVAL_S="1")
    use_env(monkeypatch, env)
    procs = Processes(env, tmp_path)
    flower_port = free_port()
    with open(tmp_path / "flower.log", "wb") as log:  # flower has its own copy of the descriptor
        flower = subprocess.Popen(
            command("flower", f"--port={flower_port}", f"--db={tmp_path / 'flower.db'}"),
            env={**env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    flower_url = f"http://127.0.0.1:{flower_port}"
    try:
        wait_until(lambda: _up(flower_url), 90, message="flower")
        stockouts = recent(sandbox, 60, bad=4)
        expected = eligible(stockouts)
        sandbox.set_faults(bip={"http_502": 0.1, "code_310504": 0.1, "rate_limit": 0.05})
        procs.worker(concurrency=4)
        procs.beat()
        poll_once(runtime(), publish_stockout)
        wait_until(lambda: len(saved(sandbox)) >= 20, message="saves under way", progress=pipeline(sandbox))
        sandbox.revoke_tokens()  # a token renewal in the middle of it
        client = connect(server.url, str(server.ca))
        letters = DeadLetterStore(client, "t")
        wait_until(lambda: expected <= set(saved(sandbox)) | set(letters.ids()), message="settled",
                   progress=pipeline(sandbox, client))
        assert len(letters.ids()) == 4 and sandbox.counters()["bip_token_rejections"] >= 1
        assert sum(sandbox.counters()["faults"].values()) > 0, "no retry happened"
        wait_until(lambda: any(r.body.get("msgtype") == "markdown" and "dead letter" in r.body["markdown"]["title"]
                               for r in robot.requests), 30, message="the dead-letter alert")

        # what an operator and an attacker could read
        auth = FLOWER_AUTH
        assert requests.get(f"{flower_url}/api/tasks", timeout=5).status_code == 401
        tasks = requests.get(f"{flower_url}/api/tasks", auth=auth, timeout=10).text
        workers = requests.get(f"{flower_url}/api/workers", auth=auth, timeout=30).text
        queues = requests.get(f"{flower_url}/api/queues/length", auth=auth, timeout=10).text
        failed = requests.get(f"{flower_url}/api/tasks", params={"state": "FAILURE"}, auth=auth, timeout=10).json()
        assert failed, "the dead letters' failures are in flower"
        details = "".join(
            requests.get(f"{flower_url}/api/task/info/{tid}", auth=auth, timeout=10).text for tid in failed
        )
        dlq_json = cli(env, "dlq", "list", "--json")
        assert dlq_json.returncode == 0 and len(json.loads(dlq_json.stdout)) == 4
        everything = {
            "logs": procs.logs() + (tmp_path / "flower.log").read_text(errors="replace"),
            "redis": redis_dump(client),
            "dead letters": dlq_json.stdout + dlq_json.stderr,
            "flower": tasks + workers + queues + details,
        }
        assert "stockout_sync.sync_stockout" in everything["flower"] and "t:dlq:" in everything["redis"]
        for place, text in everything.items():
            for secret in SECRETS:
                assert secret not in text, f"a secret leaked into {place}"
    finally:
        stop(flower)
        procs.stop_all()
        sandbox.stop()
        server.stop()
        robot.close()


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthcheck", auth=FLOWER_AUTH, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
