"""Redis state against a real server: the Lua scripts, TTLs and the cursor's one-way movement."""
from __future__ import annotations

from datetime import datetime, timedelta

from shared.state import StateStore, parse_done, stockout_key
from shared.timeutil import BEIJING


def make(redis_client, ttl=3600):
    return StateStore(redis_client, "t", ttl)


def test_queued_never_overwrites_done_and_states_come_in_one_call(redis_client):
    store = make(redis_client)
    store.mark_done("1", "1900000000000000001", "QTCK-1")
    store.mark_queued(["1", "2"])
    assert store.states(["1", "2", "3"]) == {"1": "d|1900000000000000001|QTCK-1", "2": "q", "3": None}
    assert store.done("1").bip_id == "1900000000000000001"
    assert store.done("2") is None
    assert 0 < redis_client.ttl("t:so:2") <= 3600


def test_lock_is_exclusive_but_the_same_task_may_take_it_back(redis_client):
    store = make(redis_client)
    assert store.acquire("7", "task-a", 5) == 0
    wait = store.acquire("7", "task-b", 5)
    assert 0 < wait <= 5
    # a redelivered message keeps its task id: it must not wait for its own dead predecessor
    assert store.acquire("7", "task-a", 5) == 0
    store.release("7", "task-b")  # not the owner: no effect
    assert store.acquire("7", "task-b", 5) > 0
    store.release("7", "task-a")
    assert store.acquire("7", "task-b", 5) == 0


def test_cursor_only_moves_forward(redis_client):
    store = make(redis_client)
    t1 = datetime(2026, 11, 29, 10, 0, tzinfo=BEIJING)
    store.advance_cursor(t1)
    store.advance_cursor(t1 - timedelta(hours=1))
    assert store.cursor() == t1
    store.advance_cursor(t1 + timedelta(seconds=1))
    assert store.cursor() == t1 + timedelta(seconds=1)


def test_poll_lock_is_single_and_only_its_owner_renews_or_releases(redis_client):
    store = make(redis_client)
    assert store.acquire_poll_lock("a", 5)
    assert not store.acquire_poll_lock("b", 5)
    assert not store.renew_poll_lock("b", 5)
    store.release_poll_lock("b")
    assert not store.acquire_poll_lock("b", 5)
    assert store.renew_poll_lock("a", 5)
    store.release_poll_lock("a")
    assert store.acquire_poll_lock("b", 5)


def test_stockout_key_uses_the_id_or_a_stable_content_hash():
    assert stockout_key({"stockout_id": " 123 "}) == "123"
    a = stockout_key({"stockout_id": "", "order_no": "CK1"})
    assert a.startswith("noid-") and a == stockout_key({"order_no": "CK1", "stockout_id": ""})
    assert a != stockout_key({"stockout_id": "", "order_no": "CK2"})
    assert parse_done("q") is None and parse_done(None) is None
