"""The dead-letter store on a real Redis: history across requeues, expiry, personal data, the order index."""
from __future__ import annotations

import time

import pytest

from shared.core.personal import PERSONAL_FIELDS
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.mapping.model import MEMO_FIELDS

RECEIVER = {"receiver_name": "张三", "receiver_mobile": "13800000000", "receiver_telno": "021-1234567",
            "receiver_address": "上海市浦东新区xx路1号", "receiver_zip": "200000"}


def letter(sid: str, *, at: str = "2026-11-29 10:00:00", attempts: int = 3, message: str = "boom", **raw) -> DeadLetter:
    stockout = {"stockout_id": sid, "order_no": f"CK{sid}", "receiver_province": "上海", **raw}
    return DeadLetter(stockout_id=sid, order_no=f"CK{sid}", stage="save", error_class="APIConnectionError",
                      message=message, attempts=attempts, first_failed_at=at, last_failed_at=at, stockout=stockout)


@pytest.fixture
def store(redis_client):
    return DeadLetterStore(redis_client, "t", ttl_s=3600, keep_personal_data=False)


def entry(sid: str) -> bytes:
    return f'{{"headers": {{"id": "dlq-{sid}"}}, "body": "{sid}"}}'.encode()


def test_a_requeued_letter_that_fails_again_continues_its_history(store):
    store.put(letter("1", at="2026-11-29 10:00:00", attempts=6, message="first"))
    sent = []
    assert store.requeue(["1"], lambda raw, key: sent.append(key)) == ["1"]
    assert store.get("1") is None and store.history("1").history[-1].event == "requeued"
    again = store.put(letter("1", at="2026-11-29 12:00:00", attempts=6, message="second"))
    assert again.attempts == 12 and again.first_failed_at == "2026-11-29 10:00:00"
    assert again.last_failed_at == "2026-11-29 12:00:00"
    assert [(h.event, h.message) for h in again.history] == [
        ("dead_lettered", "first"), ("requeued", ""), ("dead_lettered", "second")]
    assert store.history("1") is None and store.get("1") == again


def test_the_history_tells_which_failed_task_a_requeue_resolved(store):
    store.put(letter("1").model_copy(update={"task_id": "task-a"}))
    assert store.get("1").requeued_after("task-a") is None  # not requeued yet
    on_sent: list[list[str]] = []
    store.requeue(["1"], lambda raw, key: None, on_sent=lambda letters: on_sent.append([x.task_id for x in letters]))
    assert on_sent == [["task-a"]] and store.history("1").requeued_after("task-a")
    again = store.put(letter("1", at="2026-11-29 12:00:00").model_copy(update={"task_id": "task-b"}))
    assert again.requeued_after("task-a") and again.requeued_after("task-b") is None
    assert again.requeued_after("task-unknown") is None


def test_a_letter_failing_again_before_its_requeue_is_finished_keeps_its_history(store):
    # a worker that fails the message within milliseconds, or the publisher's own size check, puts the
    # new letter while the requeue still holds the parked copy (it unparks after publishing)
    store.put(letter("1", at="2026-11-29 10:00:00", attempts=6, message="first"))

    def publish_and_fail_at_once(raw, key):
        store.put(letter(key, at="2026-11-29 12:00:00", attempts=1, message="second"))

    assert store.requeue(["1"], publish_and_fail_at_once) == ["1"]
    again = store.get("1")
    assert again.attempts == 7 and again.first_failed_at == "2026-11-29 10:00:00"
    assert [(h.event, h.message) for h in again.history] == [
        ("dead_lettered", "first"), ("requeued", ""), ("dead_lettered", "second")]
    assert store.parked() == [] and store.history("1") is None  # the record holds the whole story
    # the story goes on the same way after an ordinary requeue
    store.requeue(["1"], lambda raw, key: None)
    third = store.put(letter("1", at="2026-11-29 13:00:00", attempts=1, message="third"))
    assert [h.message for h in third.history if h.event == "dead_lettered"] == ["first", "second", "third"]
    assert len(third.history) == 5 and third.attempts == 8


def test_purge_forgets_the_history(store):
    store.put(letter("1"))
    store.requeue(["1"], lambda raw, key: None)
    store.put(letter("1"))
    assert store.purge(["1"]) == ["1"]
    assert store.put(letter("1")).history[0].event == "dead_lettered" and len(store.get("1").history) == 1


def test_receiver_data_is_dropped_unless_kept(store, redis_client):
    assert not set(PERSONAL_FIELDS) & set(MEMO_FIELDS), "no mapping may read what a letter drops"
    kept = store.put(letter("1", **RECEIVER))
    assert not [k for k in kept.stockout if k.startswith("receiver_")] and kept.stockout["order_no"]
    assert "13800000000" not in redis_client.get("t:dlq:rec:1").decode()
    keeping = DeadLetterStore(redis_client, "t", ttl_s=3600, keep_personal_data=True)
    assert keeping.put(letter("2", **RECEIVER)).stockout["receiver_mobile"] == "13800000000"


def test_an_order_number_names_its_letter_until_the_letter_goes(store):
    store.put(letter("1"))
    assert store.find_order("CK1") == "1" and store.find_order("CK9") is None
    store.purge(["1"])
    assert store.find_order("CK1") is None


def test_claims_remove_exactly_their_copy_from_the_queue(store, redis_client):
    for sid in ("1", "2", "3"):
        store.put(letter(sid))
        store.push_copy(sid, entry(sid))
    store.push_copy("2", entry("2") + b" ")  # dead-lettered again: its copy is replaced, not added
    assert store.queue_length() == 3
    assert store.purge(["2"]) == ["2"]
    assert redis_client.lrange("t:dead_letter", 0, -1) == [entry("3"), entry("1")]
    store.requeue(store.ids(), lambda raw, key: None)
    assert store.queue_length() == 0 and redis_client.hlen("t:dlq:entries") == 0


def test_letters_expire_after_the_ttl_with_their_index_entries(store, redis_client):
    for sid in ("1", "2"):
        store.put(letter(sid))
        store.push_copy(sid, entry(sid))
    redis_client.zadd("t:dlq:index", {"1": time.time() - 3601})  # last failed over an hour ago
    assert store.expire() == 1
    assert store.ids() == ["2"] and store.get("1") is None and store.queue_length() == 1
    assert store.find_order("CK1") is None and 0 < redis_client.ttl("t:dlq:rec:2") <= 3600 + 86400


def test_iter_all_reads_in_batches_oldest_first(store):
    for i in range(450):
        store.put(letter(str(i)))
    assert [x.stockout_id for x in store.iter_all()] == [str(i) for i in range(450)]


def test_the_settings_name_their_variable_and_reach_every_store(redis_client, monkeypatch):
    from pydantic import ValidationError

    from shared.core.settings import Settings, get_settings

    with pytest.raises(ValidationError, match="dlq_ttl_days"):
        Settings(_env_file=None, dlq_ttl_days=0)
    monkeypatch.setenv("DLQ_TTL_DAYS", "2")
    monkeypatch.setenv("DLQ_KEEP_PERSONAL_DATA", "true")
    get_settings.cache_clear()
    try:
        store = DeadLetterStore(redis_client, "t")  # as the worker and the CLI make it
        assert store.ttl_s == 2 * 86400 and store.keep_personal_data
        assert store.put(letter("1", **RECEIVER)).stockout["receiver_name"] == "张三"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_fix_key_groups_letters_by_what_the_operator_fixes():
    """Real transform failures (the demo mapping) and BIP refusals: one key per fix, whatever the stockout."""
    from ops.demo import DEMO_MAPPING
    from sandbox.data import generate_stockouts
    from shared.core.errors import InvalidRequestError
    from shared.deadletters.model import fix_key, stage_of
    from shared.mapping.model import load_mapping
    from worker.tasks import rejected_at
    from worker.transform import preview

    mapping = load_mapping(DEMO_MAPPING)
    good = [s for s in generate_stockouts(40, first_id=1, seed=7).stockouts if s["status"] in ("95", "110")]

    def failed(raw: dict, error: Exception | None = None) -> DeadLetter:
        if error is None:
            with pytest.raises(Exception) as caught:
                preview(raw, mapping)
            error = caught.value
        return DeadLetter.new(raw["stockout_id"], error, stage=stage_of(error), stockout=raw, task_id="t",
                              message_id="m", mapping_fingerprint="f", where=rejected_at(error, raw, mapping))

    ghost_wh = [failed({**s, "warehouse_no": "WH-GHOST"}) for s in good[:2]]
    other_wh = failed({**good[2], "warehouse_no": "WH-OTHER"})
    no_lines = [failed({**s, "details_list": []}) for s in good[3:5]]
    unit = [failed({**s, "details_list": [*s["details_list"][:1], {**s["details_list"][0], "goods_unit": "桶"}]})
            for s in good[5:7]]
    material = [failed(s, InvalidRequestError(f"bip save: 999 物料[SKU-GHOST]不存在 ({s['order_no']})", api="bip",
                                              code="999", api_message="物料[SKU-GHOST]不存在")) for s in good[7:9]]

    keys = {fix_key(x) for x in ghost_wh}
    assert len(keys) == 1 and "WH-GHOST" in next(iter(keys)) and fix_key(other_wh) not in keys
    assert len({fix_key(x) for x in no_lines}) == 1 and "details_list is empty" in fix_key(no_lines[0])
    assert len({fix_key(x) for x in unit}) == 1 and "'桶'" in fix_key(unit[0]) and "[*]" in fix_key(unit[0])
    assert {fix_key(x) for x in material} == {"save: [bip 999] 物料[SKU-GHOST]不存在"}
    for x in [*ghost_wh, *no_lines, *unit, *material]:
        assert x.stockout_id not in fix_key(x) and x.order_no not in fix_key(x)
