"""The receiver's data leaves a stockout whole but for itself, and a stockout without an id keeps its
de-duplication key when the publisher drops that data."""
from __future__ import annotations

from shared.core.personal import redact
from shared.redis.state import stockout_key


def test_every_receiver_field_goes_and_nothing_else():
    raw = {"stockout_id": "1", "receiver_name": "张三", "receiver_city": "上海市", "receiverx": "kept", "remark": "r"}
    assert redact(raw) == {"stockout_id": "1", "receiverx": "kept", "remark": "r"}
    assert raw["receiver_name"] == "张三", "a copy: the caller's dict is untouched"
    assert redact([1]) == [1] and redact({"a": 1}) == {"a": 1}


def test_a_stockout_without_an_id_keys_the_same_before_and_after_redaction():
    raw = {"stockout_id": "", "order_no": "CK1", "receiver_mobile": "13900000000"}
    assert stockout_key(raw) == stockout_key(redact(raw))
    assert stockout_key(raw) != stockout_key({**raw, "order_no": "CK2"})
