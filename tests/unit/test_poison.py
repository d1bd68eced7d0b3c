"""Recognising poison messages on their raw bytes: every kind the integration test pushes is named,
and what our own publisher and kombu's broadcast replies write passes."""
from __future__ import annotations

import base64
import json

import pytest

from shared.deadletters.store import DeadLetterStore
from shared.queue.app import get_app
from shared.queue.poison import quarantine, what_is_wrong
from shared.queue.publisher import _Page
from tests.integration.test_poison import KINDS, MAX_BYTES


@pytest.fixture(scope="module")
def tasks():
    import producer.tasks  # noqa: F401  (registers the tasks, as the worker's include does)
    import worker.tasks  # noqa: F401

    return {name: task.run for name, task in get_app().tasks.items()}


@pytest.mark.parametrize(("kind", "make", "words"), KINDS, ids=[k[0] for k in KINDS])
def test_each_kind_is_named(tasks, kind, make, words):
    problem = what_is_wrong(make(7), max_bytes=MAX_BYTES, tasks=tasks)
    assert problem is not None and words in problem, f"{kind}: {problem}"


def test_our_own_messages_pass(tasks):
    page = _Page("stockouts")
    page.add({"stockout_id": "1", "order_no": "CK1"}, "1")
    assert what_is_wrong(page.entries[0], max_bytes=MAX_BYTES, tasks=tasks) is None


def test_a_reply_to_a_broadcast_is_no_task_and_passes():
    reply = json.dumps({"body": base64.b64encode(b'{"ok": 1}').decode(), "content-type": "application/json",
                        "content-encoding": "utf-8", "headers": {"ticket": "x"},
                        "properties": {"delivery_tag": "t", "body_encoding": "base64", "delivery_info": {}}}).encode()
    assert what_is_wrong(reply, max_bytes=MAX_BYTES, tasks=None) is None
    assert what_is_wrong(b"[1]", max_bytes=MAX_BYTES, tasks=None) == "a JSON array, not an object"


def test_a_letter_keeps_the_bytes_escaped_and_is_the_same_for_the_same_bytes(redis_client):
    store = DeadLetterStore(redis_client, "t", ttl_s=3600, keep_personal_data=False)
    letter = quarantine(store, b"\xff\x00ok", "not UTF-8 text (byte 0)", queue="stockouts")
    assert letter.raw == "\\xff\x00ok" and letter.reason == "malformed message: not UTF-8 text (byte 0)"
    again = quarantine(store, b"\xff\x00ok", "x", queue="producer")
    assert again.stockout_id == letter.stockout_id and again.attempts == 2 and store.ids() == [letter.stockout_id]
