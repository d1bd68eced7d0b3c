"""One owner of the Redis key layout: every key comes from `shared.redis.keys.Keys`, no outside value can
name one of our own keys, and the documented table is the class's."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore, _upgraded
from shared.redis.keys import Keys, part

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ["index", "entries", "orders", "parked", "layout", "a:b*c", "rec:1", "requeuing:1", "lease:7",
           "history:7", "x" * 65, "单号", "~abc", "1 2", "?", "[a-z]", "\n", "", "0" * 10_000]
FIXED = [name for name, value in inspect.getmembers(Keys, lambda v: isinstance(v, property))]
FAMILIES = ["lock", "attempts", "dlq_record", "dlq_requeuing", "dlq_lease", "dlq_history", "backfill_job"]


def test_a_plain_id_stands_as_it_is_and_any_other_value_is_encoded_bounded_and_distinct():
    assert part("4711") == "4711" and part("noid-0a1b") == "noid-0a1b"
    encoded = {v: part(v) for v in HOSTILE if not re.fullmatch(r"[0-9A-Za-z_.-]{1,64}", v)}
    for value, key_part in encoded.items():
        assert key_part.startswith("~") and len(key_part) == 41, value
        assert re.fullmatch(r"~[0-9a-f]{40}", key_part)
    assert len(set(encoded.values())) == len(encoded)
    assert part("~abc") != "~abc"  # `~` is never plain: an encoded part cannot be forged


@pytest.mark.invariant(11)
def test_no_outside_value_names_one_of_our_own_keys():
    keys = Keys("p")
    fixed = {getattr(keys, name) for name in FIXED}
    made: dict[str, tuple[str, str]] = {}
    for family in FAMILIES:
        for value in [*HOSTILE, "42"]:
            key = getattr(keys, family)(value)
            assert key not in fixed, (family, value)
            assert made.setdefault(key, (family, value)) == (family, value), f"{key} made twice"
            assert len(key) < 100


def _letter(sid: str, order_no: str = "") -> DeadLetter:
    return DeadLetter(stockout_id=sid, order_no=order_no, stockout={"stockout_id": sid, "order_no": order_no},
                      stage="transform", error_class="TransformError", message="unmapped warehouse",
                      attempts=1, first_failed_at="2026-12-01 10:00:00", last_failed_at="2026-12-01 10:00:00")


@pytest.fixture
def fresh(redis_client):
    """A real server (the store's steps are Lua scripts), as a new process finds it."""
    _upgraded.clear()
    return redis_client


def test_letters_whose_ids_are_the_stores_own_key_names_live_beside_each_other(fresh):
    store = DeadLetterStore(fresh, "t", ttl_s=3600, keep_personal_data=False)
    ids = ["index", "entries", "orders", "parked", "a:b*c", "rec:1", "layout"]
    for i, sid in enumerate(ids):
        store.put(_letter(sid, f"CK{i}"))
        store.push_copy(sid, f"entry-{i}".encode())
    assert sorted(store.ids()) == sorted(ids) and store.count() == len(ids)
    assert {letter.stockout_id for letter in store.all()} == set(ids)
    assert store.get("index") is not None and store.find_order("CK4") == "a:b*c"
    assert store.purge(["entries", "a:b*c"]) == ["entries", "a:b*c"]
    assert sorted(store.requeue(["index", "orders"], lambda raw, key: None)) == ["index", "orders"]
    assert sorted(store.ids()) == ["layout", "parked", "rec:1"]
    assert store.queue_length() == 3


def test_an_upgrade_moves_the_letters_an_older_version_stored_and_reads_them(fresh):
    # as the layout before `rec:` wrote them: the record at `{p}:dlq:<id>`, indexed by id
    for sid in ("1001", "CK-7"):
        fresh.set(f"t:dlq:{sid}", _letter(sid, f"N{sid}").model_dump_json())
        fresh.zadd("t:dlq:index", {sid: 1_700_000_000})
    fresh.zadd("t:dlq:index", {"index": 1_700_000_000})  # such an id named the index itself: nothing to move
    store = DeadLetterStore(fresh, "t", ttl_s=10**10, keep_personal_data=False)
    assert {letter.stockout_id for letter in store.all()} == {"1001", "CK-7"}
    assert not fresh.exists("t:dlq:1001") and fresh.type("t:dlq:index") == b"zset"
    assert fresh.get(Keys("t").dlq_layout) == b"2"
    fresh.set("t:dlq:1002", _letter("1002").model_dump_json())  # written after the upgrade ran: not ours
    assert store.upgrade_layout() == 0
