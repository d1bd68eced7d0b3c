"""Data minimisation: a queued message carries no receiver data (read from the raw bytes Redis holds),
and the stockout it carries still becomes the same BIP record."""
from __future__ import annotations

import base64
import json

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.integration.faults import eligible, recent, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration

RECEIVER = {"receiver_name": "张三丰", "receiver_mobile": "13912345678", "receiver_telno": "021-87654321",
            "receiver_address": "上海市浦东新区世纪大道100号", "receiver_zip": "200120",
            "receiver_province": "上海", "receiver_city": "上海市", "receiver_district": "浦东新区"}


def _bodies(redis_client, queue: str) -> list[bytes]:
    """Every entry of a queue as Redis holds it, and its message body decoded (base64 inside JSON)."""
    raw = redis_client.lrange(f"t:{queue}", 0, -1)
    return raw + [base64.b64decode(json.loads(entry)["body"]) for entry in raw]


def test_queued_messages_hold_no_receiver_data(sandbox, processes, redis_client):
    stockouts = recent(sandbox, 12)
    for s in stockouts:
        s.update(RECEIVER)
    sandbox.add_stockouts(stockouts)
    summary = poll_once(runtime(), publish_stockout)
    assert summary.published == len(eligible(stockouts)) > 0
    queued = _bodies(redis_client, "stockouts")
    assert len(queued) == 2 * summary.published
    for data in queued:
        text = data.decode()
        assert "receiver_" not in text, text[:300]
        for value in RECEIVER.values():
            assert value not in text and json.dumps(value)[1:-1] not in text
    processes.worker(concurrency=2)
    wait_until(lambda: eligible(stockouts) <= set(saved(sandbox)), message="all saved",
               progress=pipeline(sandbox, redis_client))
    assert max(saved(sandbox).values()) == 1
