"""Bad input is isolated: each bad stockout ends dead-lettered at once with a reason that names the
field, while every good one is saved; messages that are not JSON never run (they are quarantined)."""
from __future__ import annotations

import base64
import json
import os
import pickle
import uuid

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.deadletters.store import DeadLetterStore
from shared.queue.app import SYNC_TASK, app
from shared.queue.publisher import publish_stockout
from shared.redis.state import stockout_key
from shared.runtime import runtime
from tests.integration.faults import eligible, outcome, recent, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration


def _line(s, **changes):
    line = dict(s["details_list"][0])
    line.update(changes)
    return line


# (case, how to break a good stockout, words the reason must contain)
CASES = [
    ("empty details_list", lambda s: {"details_list": []}, ["details_list"]),
    ("non-numeric quantity", lambda s: {"details_list": [_line(s, goods_count="three")]}, ["goods_count", "three"]),
    ("negative quantity", lambda s: {"details_list": [_line(s, goods_count="-2.0000")]}, ["goods_count", "-2"]),
    ("zero quantity", lambda s: {"details_list": [_line(s, goods_count="0.0000")]}, ["goods_count", "0"]),
    ("unknown warehouse", lambda s: {"warehouse_no": "WH-NOPE"}, ["warehouse_no", "WH-NOPE"]),
    ("unknown material", lambda s: {"details_list": [_line(s, spec_no="SKU-GHOST", batch_no="")]},
     ["SKU-GHOST", "details_list[0].spec_no"]),
    ("unknown unit", lambda s: {"details_list": [_line(s, goods_unit="吨")]}, ["goods_unit", "吨"]),
    ("missing consign_time", lambda s: {"consign_time": None}, ["consign_time"]),
    ("malformed consign_time", lambda s: {"consign_time": "2026/11/29 10:00"}, ["consign_time", "2026/11/29"]),
    ("zero-date consign_time", lambda s: {"consign_time": "0000-00-00 00:00:00"}, ["consign_time"]),
    ("over-long material code", lambda s: {"details_list": [_line(s, spec_no="S" * 100)]}, ["spec_no"]),
    ("details_list not a list", lambda s: {"details_list": "oops"}, ["details_list"]),
    ("quantity is a list", lambda s: {"details_list": [_line(s, goods_count=["1"])]}, ["goods_count"]),
    ("empty stockout_id", lambda s: {"stockout_id": ""}, ["stockout_id"]),
]


@pytest.mark.invariant(3)
def test_each_bad_stockout_is_dead_lettered_with_its_field_and_the_good_ones_are_saved(
    sandbox, processes, redis_client
):
    stockouts = recent(sandbox, 40)
    good = eligible(stockouts)
    templates = [s for s in stockouts if s["status"] in ("95", "110") and s["details_list"]]
    bad_keys = {}
    for i, (case, breaks, _) in enumerate(CASES):
        broken = json.loads(json.dumps(templates[i % len(templates)]))
        broken["stockout_id"] = f"9{i:05d}"
        broken["order_no"] = f"CK-BAD-{i}"
        for key, value in breaks(broken).items():
            if value is None:
                broken.pop(key, None)
            else:
                broken[key] = value
        sandbox.add_stockouts([broken])
        bad_keys[stockout_key(broken)] = case
    processes.worker(concurrency=4)
    summary = poll_once(runtime(), publish_stockout)
    assert summary.published == len(good) + len(CASES)
    letters = DeadLetterStore(redis_client, "t")
    wait_until(lambda: good <= set(saved(sandbox)) and set(bad_keys) <= set(letters.ids()),
               message="good saved, bad dead-lettered", progress=pipeline(sandbox, redis_client))
    assert max(saved(sandbox).values()) == 1
    reasons = {}
    for letter in letters.all():
        case = bad_keys[letter.stockout_id]
        words = next(w for c, _, w in CASES if c == case)
        reasons[case] = letter.message
        assert letter.attempts == 1, f"{case}: a bad stockout is not retried"
        for word in words:
            assert word in letter.message, f"{case}: {word!r} not in {letter.message!r}"
        assert letter.stockout["order_no"].startswith("CK-BAD-"), "the original is kept whole"
    assert set(reasons) == {c for c, _, _ in CASES}
    row = outcome(
        f"bad input: {len(CASES)} kinds of broken stockout among good ones", sandbox, good | set(bad_keys), letters
    )
    assert row["lost"] == 0 and row["duplicates"] == 0 and row["dead_lettered"] == len(CASES)


def _raw_message(body: bytes, content_type: str, task_id: str) -> bytes:
    """A message as kombu's Redis transport stores it, with a body of our choosing."""
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": content_type,
        "headers": {"lang": "py", "task": SYNC_TASK, "id": task_id, "retries": 0, "argsrepr": "()", "kwargsrepr": "{}"},
        "properties": {"correlation_id": task_id, "delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
                       "delivery_mode": 2, "delivery_info": {"exchange": "stockouts", "routing_key": "stockouts"},
                       "priority": 0},
    }).encode()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_messages_that_are_not_json_are_refused_without_running_anything(sandbox, processes, redis_client, tmp_path):
    marker = tmp_path / "pickle-ran"
    processes.worker(concurrency=2)
    evil = pickle.dumps(((), {"stockout": _Exploit(str(marker))}, {}))
    redis_client.lpush("t:stockouts", _raw_message(evil, "application/x-python-serialize", "evil-pickle"))
    redis_client.lpush("t:stockouts", b"this is not JSON at all {")
    redis_client.lpush("t:stockouts", _raw_message(b"{not json", "application/json", "evil-json"))
    # a good stockout after the bad messages is still saved by the same worker
    stockouts = recent(sandbox, 3)
    poll_once(runtime(), publish_stockout)
    wait_until(lambda: eligible(stockouts) <= set(saved(sandbox)), message="good saved after bad messages",
               progress=pipeline(sandbox, redis_client))
    assert not marker.exists(), "a pickled message was deserialised and ran code"
    assert app.conf.accept_content == ["json"]
    # quarantined undecoded (shared/queue/poison.py), each with its reason
    letters = wait_until(lambda: len(DeadLetterStore(redis_client, "t").all()) == 3
                         and DeadLetterStore(redis_client, "t").all(), 10, message="three malformed letters")
    reasons = sorted(letter.reason for letter in letters)
    assert any("content type 'application/x-python-serialize'" in r for r in reasons), reasons
    assert any("not JSON" in r and "body" not in r for r in reasons), reasons
    assert any("body is not JSON" in r for r in reasons), reasons
    assert all(p.poll() is None for p in processes.procs), "a bad message crashed the worker"
