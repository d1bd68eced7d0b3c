"""The one owned lock: only its holder renews or frees it, and a loop may keep it or take it when free."""
from __future__ import annotations

from shared.redis.lock import OwnedLock


def test_only_the_holder_renews_or_releases(redis_client):
    lock = OwnedLock(redis_client, "t:lock:test")
    assert lock.acquire("a", 5) and not lock.acquire("b", 5)
    assert not lock.renew("b", 60) and redis_client.pttl("t:lock:test") <= 5000
    assert lock.renew("a", 60) and redis_client.pttl("t:lock:test") > 5000
    assert not lock.release("b") and redis_client.get("t:lock:test") == b"a"
    assert lock.release("a") and not redis_client.exists("t:lock:test")


def test_a_loop_keeps_its_lock_or_takes_it_when_free_but_never_another_s(redis_client):
    lock = OwnedLock(redis_client, "t:lock:loop")
    assert not lock.renew("a", 5), "plain renew never takes a free lock"
    assert lock.renew("a", 5, or_take=True) and redis_client.get("t:lock:loop") == b"a"
    assert not lock.renew("b", 5, or_take=True) and redis_client.get("t:lock:loop") == b"a"
