"""Every dead letter is made one way (`DeadLetter.new`), whoever makes it: the worker, the poison check and
the publisher's size check, each run for real on a real Redis. (tests/repo/test_letters.py holds that no
other code builds a DeadLetter itself.) Also the stage of a failure, and the letters older versions wrote."""
from __future__ import annotations

import json
import socket

import pytest
import redis
from billiard.exceptions import SoftTimeLimitExceeded

from shared.core.errors import (
    ConfigurationError,
    InvalidRequestError,
    MappingError,
    StockoutSyncError,
    foreign,
)
from shared.core.settings import get_settings
from shared.core.timeutil import now_beijing, parse_wire
from shared.deadletters.model import STAGES, DeadLetter, stage_of
from shared.deadletters.store import DeadLetterStore
from shared.queue.poison import quarantine
from shared.queue.publisher import Publisher
from shared.runtime import Runtime
from worker.tasks import dead_letter

HOST = "letters-made-here"  # what this test's machine calls itself: a letter filling its host another way shows
RECEIVER = {"receiver_name": "张三", "receiver_mobile": "13800000000"}


def stockout(sid: str, **extra: str) -> dict:
    return {"stockout_id": sid, "order_no": f"CK{sid}", "warehouse_no": "WH1", **RECEIVER, **extra}


@pytest.fixture
def made(redis_client, monkeypatch):
    """The letters each maker wrote for one failure of its own, as the store holds them."""
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)  # the standard library's, not ours
    monkeypatch.setenv("MAX_MESSAGE_BYTES", "65536")
    get_settings.cache_clear()
    try:
        before = now_beijing().replace(microsecond=0)
        refused = InvalidRequestError("bip save: 999 物料[SKU-X]不存在", api="bip", code="999",
                                      api_message="物料[SKU-X]不存在", http_status=200)
        rt = Runtime(get_settings())
        dead_letter(rt, stockout("1"), "1", refused, attempts=3, task_id="task-1")
        rt.redis.close()
        store = DeadLetterStore(redis_client, "t")
        quarantine(store, b"\xff not a message", "not UTF-8 text (byte 0)", queue="stockouts")
        Publisher()(stockout("2", remark="大" * 30_000), "2")  # ~90 KB once encoded: over the 64 KiB limit
        after = now_beijing()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    letters = {x.stage: x for x in store.all()}
    assert set(letters) == {"save", "receive", "publish"}, "one letter from each maker"
    return letters, before, after


def test_each_maker_fills_the_letter_the_same_way(made):
    letters, before, after = made
    for stage, letter in letters.items():
        assert letter.worker_host == HOST, stage
        assert letter.first_failed_at == letter.last_failed_at, stage
        failed_at = parse_wire(letter.last_failed_at)
        assert failed_at is not None and before <= failed_at <= after, (stage, letter.last_failed_at)
        assert letter.history == [letter.failure()], stage
        assert not any(k.startswith("receiver_") for k in letter.stockout), f"{stage}: redacted when stored"
    worker, poison, publisher = letters["save"], letters["receive"], letters["publish"]
    assert (worker.attempts, poison.attempts, publisher.attempts) == (3, 1, 1)
    assert (worker.order_no, poison.order_no, publisher.order_no) == ("CK1", "", "CK2")
    assert (worker.error_class, poison.error_class, publisher.error_class) == (
        "InvalidRequestError", "MalformedMessage", "MessageTooLarge")


def test_each_makers_own_part(made):
    letters, _, _ = made
    worker, poison, publisher = letters["save"], letters["receive"], letters["publish"]
    assert (worker.api, worker.code, worker.api_message, worker.http_status) == ("bip", "999", "物料[SKU-X]不存在", 200)
    assert worker.message == "bip save: 999 物料[SKU-X]不存在" and worker.task_id == "task-1"
    assert worker.message_id.startswith("dlq-") and worker.mapping_fingerprint
    assert worker.stockout == {"stockout_id": "1", "order_no": "CK1", "warehouse_no": "WH1"}
    assert poison.malformed and poison.queue == "stockouts" and poison.raw == "\\xff not a message"
    assert poison.message == "not UTF-8 text (byte 0)" and poison.stockout == {}
    assert publisher.message.startswith("its message is ") and "over MAX_MESSAGE_BYTES=65536" in publisher.message
    assert publisher.stockout["remark"] == "大" * 30_000, "kept whole, to be sent once the limit is raised"
    for letter in (poison, publisher):
        assert (letter.api, letter.code, letter.task_id, letter.message_id, letter.mapping_fingerprint) == ("",) * 5


def test_where_in_the_stockout_goes_after_the_words_and_out_of_the_group():
    error = InvalidRequestError("bip save: 999 物料[SKU-X]不存在", api="bip", code="999")
    letter = DeadLetter.new("1", error, stage="save", stockout={"order_no": 7}, where="SKU-X = details_list[0].spec_no")
    assert letter.message == "bip save: 999 物料[SKU-X]不存在 (in the stockout: SKU-X = details_list[0].spec_no)"
    assert letter.group == DeadLetter.new("1", error, stage="save").group and letter.order_no == "7"
    assert DeadLetter.new("1", ValueError(), stage="internal", stockout="text").message == "ValueError"
    assert DeadLetter.new("1", ValueError(), stage="internal", stockout="text").stockout == {"_raw": "text"}


@pytest.mark.parametrize(("error", "stage"), [
    (MappingError("warehouse_no 'WH9' has no entry"), "transform"),
    (ConfigurationError("mapping file unreadable", api="mapping"), "transform"),
    (InvalidRequestError("bip save: 999", api="bip"), "save"),
    (foreign(redis.ConnectionError("refused")), "state"),  # the worker's own Redis: no fetch at all
    (foreign(redis.ConnectionError("refused"), api="bip"), "state"),  # the BIP token's cache
    (foreign(SoftTimeLimitExceeded()), "internal"),
    (StockoutSyncError("ours, of no api"), "internal"),
    (ValueError("a bug"), "internal"),
])
def test_the_stage_of_a_failure_in_the_worker(error, stage):
    assert stage_of(error) == stage and "fetch" not in STAGES


def test_a_letter_an_older_version_stored_at_stage_fetch_reads_as_the_stage_it_is(redis_client):
    store = DeadLetterStore(redis_client, "t", ttl_s=3600, keep_personal_data=False)
    line = {"at": "2026-11-29 10:00:00", "stage": "fetch", "error_class": "APIConnectionError", "attempts": 6,
            "message": "Redis unavailable (ConnectionError)"}
    for sid, api in (("1", "redis"), ("2", "")):
        record = {"stockout_id": sid, "stage": "fetch", "api": api, "error_class": "APIConnectionError",
                  "message": "Redis unavailable (ConnectionError)", "first_failed_at": line["at"],
                  "last_failed_at": line["at"], "history": [line]}
        redis_client.set(store.k.dlq_record(sid), json.dumps(record))
        redis_client.zadd(store.index_key, {sid: float(sid)})
    old_redis, old_other = store.get("1"), store.get("2")
    assert (old_redis.stage, old_other.stage) == ("state", "internal")
    assert old_redis.group == "state: Redis unavailable"
    assert [x.stage for x in store.summaries()] == ["state", "internal"]
    assert old_redis.history[0].stage == "fetch", "a line of history stays as it was written"
    assert old_redis.history[0].line().endswith("fetch: APIConnectionError: Redis unavailable (ConnectionError)")
