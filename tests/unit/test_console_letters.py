"""The console's in-process list of dead-letter summaries follows the store: new, re-failed and gone
letters, and a re-failure stamped by a lagging clock (real Redis: the store claims in Lua)."""
from __future__ import annotations

import ops.console.letters as letters_module
from ops.console.letters import LetterIndex
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore


def letter(sid: str, message: str = "boom") -> DeadLetter:
    return DeadLetter(stockout_id=sid, order_no=f"CK{sid}", stage="save", error_class="APIConnectionError",
                      message=message, first_failed_at="2026-11-29 10:00:00", last_failed_at="2026-11-29 10:00:00",
                      stockout={"stockout_id": sid, "warehouse_no": "WH1", "remark": "x" * 1000})


def test_the_index_follows_new_refailed_and_gone_letters_reading_summaries_only(redis_client):
    store = DeadLetterStore(redis_client, "t", ttl_s=3600, keep_personal_data=False)
    index = LetterIndex(store)
    assert index.current() == []
    store.put(letter("1"))
    store.put(letter("2"))
    shown = index.current()
    assert [x.stockout_id for x in shown] == ["1", "2"]
    assert shown[0].stockout == {"warehouse_no": "WH1"} and shown[0].history == [], "a summary, not the letter"
    store.put(letter("1", "again"))
    assert [(x.stockout_id, x.message) for x in index.current()] == [("2", "boom"), ("1", "again")]
    store.purge(["2"])
    assert [x.stockout_id for x in index.current()] == ["1"]


def test_a_refailure_stamped_by_a_lagging_clock_shows_at_the_next_full_read(redis_client, monkeypatch):
    store = DeadLetterStore(redis_client, "t", ttl_s=3600, keep_personal_data=False)
    index = LetterIndex(store)
    store.put(letter("1"))
    index.current()
    store.put(letter("1", "again"))
    redis_client.zadd(store.index_key, {"1": 1.0})  # as a host whose clock is far behind would stamp it
    assert index.current()[0].message == "boom", "not among the recent scores: missed for now"
    monkeypatch.setattr(letters_module, "FULL_EVERY_S", 0.0)
    assert index.current()[0].message == "again"
