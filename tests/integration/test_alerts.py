"""Alerts against local HTTP receivers: each robot's signature as apis.md documents it (recomputed here,
not with our own functions), batching, the breaker, lag, reconcile, and a dead robot beside polling."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from datetime import datetime, timedelta
from urllib.parse import quote_plus

import pytest

from ops.processes import stop, wait_until
from producer.alerts.channels import Channel, Sender
from producer.alerts.watch import AlertLoop, Watch, probe_alert
from shared.core.settings import Settings
from shared.core.timeutil import BEIJING, format_wire, now_beijing
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.redis.conn import free_port
from tests.integration.receivers import Receiver

pytestmark = pytest.mark.integration
PREFIX = "talert"
DING_TOKEN = "dt-token-6b1f0c2e9a7d4c3b8e5f"
DING_SECRET = "SECdingtalk-secret-3e9a1c7b5d"
FEISHU_HOOK = "fs-hook-0d4a8b2c6e1f9a7b3c5d"
FEISHU_SECRET = "feishu-secret-7c2e9b4a1d"
WECOM_KEY = "wc-key-5a9e1b3c7d2f8a4b6c0e"


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def quick(channels: list[Channel]) -> Sender:
    return Sender(channels, timeout_s=1.0, budget_s=2.0, backoff_s=0.2)


def test_dingtalk_signs_with_timestamp_ms_and_urlencoded_hmac(receiver):
    ding = receiver()
    channel = Channel("dingtalk", ding.url(f"/robot/send?access_token={DING_TOKEN}"), DING_SECRET)
    reply = quick([channel]).send(probe_alert())[0]
    assert reply.ok and reply.detail == "errcode 0: ok"
    got = ding.requests[0]
    assert got.path == "/robot/send" and got.query["access_token"] == [DING_TOKEN]
    timestamp = got.query["timestamp"][0]
    assert abs(int(timestamp) - time.time() * 1000) < 60_000  # milliseconds, and recent
    digest = hmac.new(DING_SECRET.encode(), f"{timestamp}\n{DING_SECRET}".encode(), hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    assert got.query["sign"] == [expected]
    # on the wire the Base64 is URL-encoded (its + / = escaped), as DingTalk's demo does it
    assert f"sign={quote_plus(expected)}" in got.raw_query
    assert got.body["msgtype"] == "markdown"
    assert "test message" in got.body["markdown"]["title"] and "alert test" in got.body["markdown"]["text"]


@pytest.mark.parametrize("msg_type", ["post", "text"])
def test_feishu_signs_the_body_with_timestamp_seconds(receiver, msg_type):
    feishu = receiver(answer={"code": 0, "msg": "success"})
    channel = Channel("feishu", feishu.url(f"/open-apis/bot/v2/hook/{FEISHU_HOOK}"), FEISHU_SECRET, msg_type)
    assert quick([channel]).send(probe_alert())[0].ok
    body = feishu.requests[0].body
    timestamp = body["timestamp"]
    assert isinstance(timestamp, str) and abs(int(timestamp) - time.time()) < 60  # seconds, as a string
    digest = hmac.new(f"{timestamp}\n{FEISHU_SECRET}".encode(), b"", hashlib.sha256).digest()
    assert body["sign"] == base64.b64encode(digest).decode()
    assert body["msg_type"] == msg_type
    if msg_type == "text":
        assert "test message" in body["content"]["text"]
    else:
        post = body["content"]["post"]["zh_cn"]
        assert "test message" in post["title"] and post["content"][0][0]["tag"] == "text"


def test_wecom_markdown_and_the_webhook_json(receiver):
    wecom, hook = receiver(), receiver(answer={"received": True})
    replies = quick([Channel("wecom", wecom.url(f"/cgi-bin/webhook/send?key={WECOM_KEY}")),
                     Channel("webhook", hook.url("/alerts"))]).send(probe_alert())
    assert [r.ok for r in replies] == [True, True]
    assert wecom.requests[0].query["key"] == [WECOM_KEY]
    got = wecom.requests[0].body
    assert got["msgtype"] == "markdown" and "test message" in got["markdown"]["content"]
    body = hook.requests[0].body
    assert {"version", "kind", "status", "severity", "title", "lines", "at", "prefix", "host", "details"} <= set(body)
    assert body["kind"] == "test" and body["status"] == "firing" and body["version"] == 1


def test_a_refusal_is_a_failure_retried_and_logged_without_the_token(receiver, caplog):
    ding = receiver(answer={"errcode": 310000, "errmsg": "sign not match"})
    caplog.set_level(logging.INFO, logger="stockout_sync.alerts")
    channel = Channel("dingtalk", ding.url(f"/robot/send?access_token={DING_TOKEN}"), DING_SECRET)
    reply = quick([channel]).send(probe_alert())[0]
    assert not reply.ok and reply.attempts >= 2 and "310000" in reply.detail
    assert "310000" in caplog.text and "not delivered to dingtalk" in caplog.text
    assert DING_TOKEN not in caplog.text and DING_SECRET not in caplog.text
    # a refused connection: the error names the class, never the URL
    dead = quick([Channel("dingtalk", f"http://127.0.0.1:{free_port()}/robot/send?access_token={DING_TOKEN}")]).send(probe_alert())[0]
    assert not dead.ok and dead.detail == "ConnectionError" and DING_TOKEN not in caplog.text


# -- what the beat finds, round by round (real Redis) ----------------------------------------------
def letter(i: int, *, code: str = "WH-XX99", stage: str = "transform") -> DeadLetter:
    now = format_wire(now_beijing())
    return DeadLetter(stockout_id=str(9000 + i), order_no=f"CK2026112900{i:02d}", stage=stage,  # type: ignore[arg-type]
                      error_class="TransformError", message=f"warehouse_no {code!r} is not in the mapping",
                      first_failed_at=now, last_failed_at=now)


@pytest.fixture
def watch(redis_client, receiver):
    hook = receiver(answer={"ok": True})
    settings = Settings(redis_prefix=PREFIX, alert_webhook_url=hook.url("/alerts"), alert_interval_s=300,
                        status_max_lag_s=900)
    queues: list[str] | None = ["producer", "stockouts"]
    w = Watch(redis_client, settings, quick([Channel("webhook", hook.url("/alerts"))]), lambda: queues)
    w.hook = hook  # type: ignore[attr-defined]
    w.dead_letters(time.time())  # alerts were on before the test's letters came (no baseline to tell)
    return w


def bodies(watch) -> list[dict]:
    return [r.body for r in watch.hook.requests]


def test_ten_dead_letters_of_one_reason_make_one_message(watch, redis_client):
    store = DeadLetterStore(redis_client, PREFIX)
    for i in range(10):
        store.put(letter(i))
    store.put(letter(50, code="310046", stage="save").model_copy(update={"api": "bip", "code": "310046",
                                                                           "error_class": "InvalidRequestError"}))
    now = time.time()
    watch.round(now)
    sent = bodies(watch)
    assert len(sent) == 2, [b["title"] for b in sent]
    big = next(b for b in sent if b["details"]["count"] == 10)
    assert big["kind"] == "dead_letters" and big["details"]["reason"] == "transform: TransformError"
    assert [e["order_no"] for e in big["details"]["examples"]] == [f"CK2026112900{i:02d}" for i in range(5)]
    assert "WH-XX99" in big["details"]["examples"][0]["reason"] and big["details"]["total"] == 11
    assert "… and 5 more" in big["lines"]

    # more of the same reason within ALERT_INTERVAL_S: kept, not sent
    for i in range(10, 13):
        store.put(letter(i))
    watch.round(now + 60)
    assert len(bodies(watch)) == 2
    # once the interval has passed: one message with what came meanwhile
    watch.round(now + 301)
    assert len(bodies(watch)) == 3 and bodies(watch)[-1]["details"]["count"] == 3
    watch.round(now + 700)
    assert len(bodies(watch)) == 3  # nothing new, nothing sent


def test_turning_alerts_on_counts_the_waiting_letters_once_and_then_tells_every_new_one(redis_client, receiver):
    store = DeadLetterStore(redis_client, PREFIX)
    for i in range(7):
        store.put(letter(i))
    hook = receiver(answer={"ok": True})
    settings = Settings(redis_prefix=PREFIX, alert_webhook_url=hook.url("/alerts"), alert_interval_s=300)

    def watch() -> Watch:  # a beat (re)started: nothing carried over but what Redis holds
        return Watch(redis_client, settings, quick([Channel("webhook", hook.url("/alerts"))]), lambda: ["stockouts"])

    now = time.time()
    watch().round(now)
    first = [r.body for r in hook.requests]
    assert len(first) == 1, first  # not seven "new" letters, and not nothing
    assert first[0]["details"]["count"] == 7 and "were waiting when alerts started" in first[0]["lines"][0]
    assert "new" not in first[0]["lines"][0]

    # two letters fail while the beat is down; a beat that starts later tells them as new, since their failure
    store.put(letter(20, code="WH-YY01", stage="save"))
    store.put(letter(21, code="WH-YY01", stage="save"))
    failed_at = redis_client.zscore(f"{PREFIX}:dlq:index", "9020")
    watch().round(now + 3600)  # an hour later
    later = [r.body for r in hook.requests][1:]
    assert [b["details"]["count"] for b in later] == [2], later
    assert later[0]["details"]["since"] == format_wire(datetime.fromtimestamp(failed_at, BEIJING))  # not "now"
    assert "2 new dead letter(s) since" in later[0]["lines"][0]


def test_a_broken_mapping_file_is_told_and_its_fix_too(watch, redis_client):
    problem = {"since": "2026-12-04 10:00:00", "error": "warehouses.WH01: field required", "file_changed_at":
               "2026-12-04 09:59:58", "last_good_from": "2026-12-01 08:00:00", "last_good_fingerprint": "ab12"}
    redis_client.set(f"{PREFIX}:mapping:invalid", json.dumps(problem))
    now = time.time()
    watch.round(now)
    watch.round(now + 10)
    assert [(b["kind"], b["status"]) for b in bodies(watch)] == [("mapping_invalid", "firing")]
    assert "warehouses.WH01: field required" in bodies(watch)[0]["lines"][0]
    redis_client.delete(f"{PREFIX}:mapping:invalid")
    watch.round(now + 20)
    assert [(b["kind"], b["status"]) for b in bodies(watch)][-1] == ("mapping_invalid", "resolved")


def test_dead_letters_wait_when_every_channel_fails(watch, redis_client, receiver):
    watch.hook.answer = {"errcode": 93000, "errmsg": "invalid webhook url"}
    DeadLetterStore(redis_client, PREFIX).put(letter(1))
    now = time.time()
    watch.round(now)
    assert len(bodies(watch)) >= 1 and watch.sent[-1][1][0].ok is False
    watch.hook.answer = {"errcode": 0, "errmsg": "ok"}
    before = len(bodies(watch))
    watch.round(now + 1)  # never told, so not held back by the interval
    assert len(bodies(watch)) == before + 1 and bodies(watch)[-1]["details"]["count"] == 1


def test_breaker_opening_and_closing_are_told_once_each(watch, redis_client):
    key = f"{PREFIX}:breaker"
    now = time.time()
    watch.round(now)
    assert bodies(watch) == []  # no breaker key at all: closed, nothing to tell
    redis_client.hset(key, mapping={"state": "open", "cause": "BIP 1090003500065: app not granted", "api": "bip",
                                    "since": "2026-11-29 10:00:00"})
    watch.round(now + 1)
    watch.round(now + 2)
    assert [(b["kind"], b["status"]) for b in bodies(watch)] == [("breaker", "firing")]
    assert bodies(watch)[0]["details"]["cause"].startswith("BIP 1090003500065") and "(bip)" in bodies(watch)[0]["title"]
    redis_client.hset(key, "state", "half_open")
    watch.round(now + 3)
    assert len(bodies(watch)) == 1
    redis_client.hset(key, "state", "closed")
    watch.round(now + 4)
    assert [(b["kind"], b["status"]) for b in bodies(watch)] == [("breaker", "firing"), ("breaker", "resolved")]


def test_cursor_lag_is_told_when_over_the_limit_repeated_per_interval_and_cleared(watch, redis_client):
    now = time.time()
    redis_client.set(f"{PREFIX}:cursor", format_wire(now_beijing() - timedelta(seconds=2000)))
    watch.round(now)
    watch.round(now + 10)
    assert [(b["kind"], b["status"]) for b in bodies(watch)] == [("cursor_lag", "firing")]
    assert bodies(watch)[0]["details"]["max_lag_s"] == 900 and bodies(watch)[0]["details"]["lag_s"] > 1900
    watch.round(now + 301)
    assert len(bodies(watch)) == 2
    redis_client.set(f"{PREFIX}:cursor", format_wire(now_beijing()))
    watch.round(now + 302)
    assert [(b["kind"], b["status"]) for b in bodies(watch)][-1] == ("cursor_lag", "resolved")


def test_no_worker_after_a_grace_and_a_reconcile_mismatch(watch, redis_client):
    queues: list[str] = ["producer"]
    watch.workers = lambda: queues
    now = time.time()
    watch.round(now)
    assert bodies(watch) == []  # a rolling restart is no news
    watch.round(now + 61)
    assert [(b["kind"], b["status"]) for b in bodies(watch)] == [("no_worker", "firing")]
    queues.append("stockouts")
    watch.round(now + 62)
    assert bodies(watch)[-1]["status"] == "resolved"

    report = {"since": "2026-11-01 00:00:00", "until": "2026-11-02 00:00:00", "mismatches": 3,
              "missing": ["CK1", "CK2"], "duplicated": [{"order_no": "CK3"}], "changed": [],
              "finished_at": "2026-11-29 12:00:00"}
    redis_client.lpush(f"{PREFIX}:reconcile:reports", json.dumps(report))
    clean = {**report, "mismatches": 0, "missing": [], "duplicated": [], "finished_at": "2026-11-29 13:00:00"}
    redis_client.lpush(f"{PREFIX}:reconcile:reports", json.dumps(clean))
    watch.round(now + 63)
    watch.round(now + 64)
    mismatch = [b for b in bodies(watch) if b["kind"] == "reconcile_mismatch"]
    assert len(mismatch) == 1 and mismatch[0]["details"]["mismatches"] == 3
    assert mismatch[0]["details"]["missing"] == ["CK1", "CK2"] and "CK3" in " ".join(mismatch[0]["lines"])


def test_one_sender_at_a_time(redis_client, receiver):
    settings = Settings(redis_prefix=PREFIX, alert_webhook_url=receiver().url("/a"))
    first, second = AlertLoop(redis_client, settings), AlertLoop(redis_client, settings)
    assert first.holds_lock() and first.holds_lock()
    assert not second.holds_lock()
    first.stop()
    assert second.holds_lock()


# -- the beat process: a dead robot does not slow polling ------------------------------------------
def test_a_hung_and_a_refusing_robot_do_not_slow_the_beats_polls(sandbox, processes, redis_client, receiver):
    release = threading.Event()
    hung = receiver(hold=release)
    refused = f"http://127.0.0.1:{free_port()}/robot/send?access_token={DING_TOKEN}"
    DeadLetterStore(redis_client, processes.env["REDIS_PREFIX"]).put(letter(1))
    processes.env.update(POLL_INTERVAL_S="1", ALERT_CHECK_INTERVAL_S="0.5", ALERT_SEND_TIMEOUT_S="30",
                         ALERT_SEND_BUDGET_S="60", ALERT_WEBHOOK_URL=hung.url("/alerts"),
                         ALERT_DINGTALK_URL=refused, ALERT_DINGTALK_SECRET=DING_SECRET)
    beat = processes.beat()
    assert hung.arrived.wait(30), "the beat never sent the dead-letter alert"
    key = f"{processes.env['REDIS_PREFIX']}:poll:last"

    def started() -> str:
        value = redis_client.get(key)
        return json.loads(value)["started_at"] if value else ""

    seen = {started()}

    def three_more_polls():
        seen.add(started())
        return len(seen - {""}) >= 4

    # the webhook holds its request the whole time; polls go on finishing every second beside it
    wait_until(three_more_polls, 20, message="polls while the alert hangs")
    assert not release.is_set() and len(hung.requests) == 1
    release.set()
    assert "alert dead_letters to dingtalk failed" in processes.logs()
    # asked to stop while it waits to try the refusing robot again, beat gives up the retry and stops
    # within a container's grace period (10 s), not after the 60 s budget, killed
    stop(beat, timeout=10)
    assert beat.returncode == 0, f"beat did not stop on SIGTERM (exit {beat.returncode})"
    logs = processes.logs()
    assert "not delivered to dingtalk after the process is stopping" in logs
    assert DING_TOKEN not in logs and DING_SECRET not in logs


def test_alert_test_command_prints_each_channels_answer(receiver):
    import os
    import subprocess
    import sys

    ding = receiver()
    feishu = receiver(answer={"code": 19021, "msg": "sign match fail or timestamp is not within one hour"})
    env = {**os.environ, "ALERT_DINGTALK_URL": ding.url(f"/robot/send?access_token={DING_TOKEN}"),
           "ALERT_DINGTALK_SECRET": DING_SECRET,
           "ALERT_FEISHU_URL": feishu.url(f"/open-apis/bot/v2/hook/{FEISHU_HOOK}")}
    done = subprocess.run([sys.executable, "-m", "ops.cli", "alert", "test", "--budget", "1.5"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "dingtalk: ok after 1 attempt(s): errcode 0: ok" in done.stdout
    assert "feishu: failed" in done.stdout and "code 19021: sign match fail" in done.stdout
    assert ding.requests[0].body["markdown"]["title"].endswith("test message: this channel works")
    for secret in (DING_TOKEN, DING_SECRET, FEISHU_HOOK):
        assert secret not in done.stdout + done.stderr

    env.pop("ALERT_FEISHU_URL")
    done = subprocess.run([sys.executable, "-m", "ops.cli", "alert", "test"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "dingtalk: ok" in done.stdout


def test_the_no_worker_check_asks_the_real_workers(processes):
    from shared.queue.nodes import consumed_queues

    assert "stockouts" not in (consumed_queues(timeout_s=1.0) or [])
    processes.worker(concurrency=1)
    assert "stockouts" in wait_until(lambda: consumed_queues(timeout_s=1.0), 20, message="a worker answering")
