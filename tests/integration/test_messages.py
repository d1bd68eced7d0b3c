"""The producer's fast path writes the very entry kombu's Redis transport would, and kombu reads it."""
from __future__ import annotations

import base64
import json

import pytest

from shared.queue.app import SYNC_TASK, app
from shared.queue.publisher import Publisher, publish_stockout
from shared.redis.keys import STOCKOUT_QUEUE

pytestmark = pytest.mark.integration

RAW = {"stockout_id": "1000001", "order_no": "CK1", "details_list": [{"spec_no": "SKU-1", "goods_count": "2.0000"}],
       "remark": "客户自提"}
# differ per message by design
IDS = {("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"), ("properties", "delivery_tag")}


@pytest.fixture
def sent_events(service):
    """Switch the app's task-sent events for one test."""
    before = app.conf.task_send_sent_event

    def switch(on: bool) -> None:
        app.conf.task_send_sent_event = on

    yield switch
    app.conf.task_send_sent_event = before


def _entries(redis_client, queue=STOCKOUT_QUEUE):
    return [json.loads(e) for e in reversed(redis_client.lrange(f"t:{queue}", 0, -1))]


def _normal(entry: dict) -> dict:
    """The entry with its per-message ids left out and its body decoded (the bytes may differ in
    spacing and escaping, the JSON may not)."""
    entry = json.loads(json.dumps(entry))
    for part, key in IDS:
        entry[part].pop(key, None)
    entry["body"] = json.loads(base64.b64decode(entry["body"]))
    return entry


def test_the_fast_path_writes_the_message_kombu_writes(sent_events, redis_client):
    sent_events(False)
    with app.producer_or_acquire() as producer:
        Publisher._send(producer, RAW, "1000001", STOCKOUT_QUEUE, None)  # kombu's own path
    ids = publish_stockout.many([(RAW, "1000001"), ({**RAW, "stockout_id": "1000002"}, "1000002")])
    single = publish_stockout(RAW, "1000001")
    kombu_entry, fast, second, one = _entries(redis_client)
    assert _normal(fast) == _normal(kombu_entry) == _normal(one) and one["headers"]["id"] == single
    assert [fast["headers"]["id"], second["headers"]["id"]] == ids  # in publishing order
    assert fast["headers"]["task"] == SYNC_TASK and fast["properties"]["delivery_info"]["routing_key"] == STOCKOUT_QUEUE

    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(STOCKOUT_QUEUE, no_ack=True)
        first = queue.get(timeout=5)  # the oldest: kombu's own entry
        message = queue.get(timeout=5)
        queue.close()
    args, kwargs, _embed = message.decode()
    assert message.headers["id"] == ids[0] and kwargs == {"stockout": RAW} and args == []
    assert first.decode()[1] == kwargs


def test_with_sent_events_a_page_still_goes_out_whole(sent_events, redis_client):
    sent_events(True)
    ids = publish_stockout.many([({**RAW, "stockout_id": str(i)}, str(i)) for i in range(5)])
    assert [e["headers"]["id"] for e in _entries(redis_client)] == ids
    assert publish_stockout.many([]) == []
