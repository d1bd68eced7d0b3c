"""The producer's per-page decisions, on fakeredis (pure logic: no Lua, no timing)."""
from __future__ import annotations

import contextlib

from producer.poll import PollSummary, publish_page
from shared.redis.state import StateStore


class Filters:
    def passes_filters(self, raw):
        ok = raw.get("status") in ("95", "110")
        return ok, "" if ok else f"status {raw.get('status')}"


def test_publishes_only_new_eligible_stockouts_and_marks_them_queued(fake_redis):
    store = StateStore(fake_redis, "t", 3600)
    store.mark_done("1", "b1", "c1")
    store.mark_queued(["2"])
    sent = []
    page = [
        {"stockout_id": "1", "status": "95"},
        {"stockout_id": "2", "status": "95"},
        {"stockout_id": "3", "status": "110"},
        {"stockout_id": "3", "status": "110"},  # the same stockout twice in a page
        {"stockout_id": "4", "status": "5"},
    ]
    summary = PollSummary()
    publish_page(page, store=store, mapping=Filters(), publish=lambda raw, key: sent.append(key), summary=summary)
    assert sent == ["3"]
    counts = (summary.fetched, summary.published, summary.already_done, summary.already_queued, summary.filtered_out)
    assert counts == (5, 1, 1, 2, 1)
    assert store.states(["3"]) == {"3": "q"}


def test_a_failed_publish_leaves_nothing_marked(fake_redis):
    store = StateStore(fake_redis, "t", 3600)

    def broken(raw, key):
        raise ConnectionError("broker down")

    with contextlib.suppress(ConnectionError):
        publish_page([{"stockout_id": "9", "status": "95"}], store=store, mapping=Filters(), publish=broken,
                     summary=PollSummary())
    # not marked queued, so the next poll publishes it
    assert store.states(["9"]) == {"9": None}
