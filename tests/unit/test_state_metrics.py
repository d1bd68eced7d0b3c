"""The state gauges' dead-letter split follows new letters, requeues and re-failures (fakeredis: pure logic)."""
from __future__ import annotations

import json

from shared.core.settings import Settings
from shared.observe.gauges import PipelineCollector


def letters(collector) -> dict[str, float]:
    family = next(f for f in collector.collect() if f.name == "stockout_sync_dead_letters")
    return {s.labels["stage"]: s.value for s in family.samples}


def put(r, sid: str, stage: str, score: float, **fields: str) -> None:
    r.set(f"t:dlq:rec:{sid}", json.dumps({"stockout_id": sid, "stage": stage, **fields}))
    r.zadd("t:dlq:index", {sid: score})


def test_dead_letters_by_stage_follow_the_index(fake_redis):
    collector = PipelineCollector(Settings(redis_prefix="t"), client=fake_redis)
    assert sum(letters(collector).values()) == 0
    put(fake_redis, "1", "transform", 100.0)
    put(fake_redis, "2", "save", 101.0)
    assert letters(collector) == {"transform": 1, "save": 1, "state": 0, "internal": 0, "receive": 0, "publish": 0}
    put(fake_redis, "3", "transform", 102.0)  # new: added without a recount
    assert letters(collector)["transform"] == 2
    # a requeue removes one; the sum no longer adds up, so everything is counted again
    fake_redis.delete("t:dlq:rec:1")
    fake_redis.zrem("t:dlq:index", "1")
    collector._dlq = (collector._dlq[0], 0.0, collector._dlq[2])  # the last full count is old
    assert letters(collector) == {"transform": 1, "save": 1, "state": 0, "internal": 0, "receive": 0, "publish": 0}


def test_letters_an_older_version_wrote_at_stage_fetch_count_where_they_read_now(fake_redis):
    # `fetch` was every worker failure neither the mapping's nor BIP's: a Redis one is `state` now
    collector = PipelineCollector(Settings(redis_prefix="t"), client=fake_redis)
    put(fake_redis, "1", "fetch", 100.0, api="redis")
    put(fake_redis, "2", "fetch", 101.0, api="")
    put(fake_redis, "3", "no such stage", 102.0)
    assert letters(collector) == {"transform": 0, "save": 0, "state": 1, "internal": 2, "receive": 0, "publish": 0}


def test_unreadable_redis_answers_state_up_zero():
    class Down:
        def pipeline(self, **_):
            raise ConnectionError("down")

    families = list(PipelineCollector(Settings(redis_prefix="t"), client=Down()).collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("stockout_sync_state_up", 0)]
