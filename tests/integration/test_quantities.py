"""Quantities exactly as written, end to end: WDT rows inserted as raw JSON text (numbers as WDT's
gateway could write them, as strings or bare JSON numbers), a real poll and a real worker. Every form
that is not a plain decimal is a dead letter naming the line's goods_count and the value (bounded);
a plain decimal reaches BIP as the same text."""
from __future__ import annotations

import json

import pytest

from ops.processes import wait_until
from producer.poll import poll_once
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.integration.faults import outcome, recent, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration

# (goods_count as it appears in the JSON text, what BIP must get or None for a dead letter)
FORMS = [
    ('"1e3"', None), ("1e3", None), ('"NaN"', None), ("NaN", None), ('"+2"', None), ('"0x10"', None),
    ('"１２"', None), ('"\\u0663"', None), ('"1e999999"', None), ("1e999999", None),
    ('"1e999999999"', None), ("1e999999999", None), ('"' + "9" * 29 + '"', None), ("9" * 5000, None),
    ('"' + "1" * 200_000 + '"', None),
    ('"3.0000"', "3.0000"), ("2.50", "2.50"), ("7", "7"), ('"0.000001"', "0.000001"),
]
MARK = "@@goods_count@@"


@pytest.mark.invariant(11)
def test_every_quantity_form_is_a_dead_letter_or_its_exact_text(sandbox, processes, redis_client):
    template = next(s for s in recent(sandbox, 20) if s["status"] in ("95", "110") and s["details_list"])
    rows, expected = [], {}
    for i, (literal, sent) in enumerate(FORMS):
        stockout = json.loads(json.dumps(template))
        stockout.update(stockout_id=f"8{i:05d}", order_no=f"CK-QTY-{i}")
        stockout["details_list"] = [dict(stockout["details_list"][0], goods_count=MARK, position_list=[])]
        rows.append(json.dumps(stockout, ensure_ascii=False).replace(json.dumps(MARK), literal))
        expected[stockout["stockout_id"]] = (literal, sent)
    assert sandbox.add_raw_stockouts(rows) == len(FORMS)
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    letters = DeadLetterStore(redis_client, "t")
    bad = {sid for sid, (_, sent) in expected.items() if sent is None}
    good = set(expected) - bad
    wait_until(lambda: good <= set(saved(sandbox)) and bad <= set(letters.ids()),
               message="plain decimals saved, the rest dead-lettered", progress=pipeline(sandbox, redis_client))
    records = {r["data"]["defines!define1"]: r["data"] for r in sandbox.records()}
    for sid in good:
        assert records[sid]["othOutRecords"][0]["qty"] == expected[sid][1], expected[sid]
    assert not bad & set(records), "no refused quantity reached BIP"
    for letter in (letters.get(sid) for sid in bad):
        assert letter is not None
        literal = expected[letter.stockout_id][0]
        assert letter.attempts == 1
        assert "details_list[0].goods_count: not a plain decimal" in letter.message, letter.message
        assert literal.strip('"')[:20].replace("\\u0663", "\u0663") in letter.message, (literal[:30], letter.message)
        assert len(letter.message) < 600, "the message is bounded whatever the value's length"
    row = outcome(f"quantities: {len(bad)} forms that are not plain decimals (1e3, NaN, +2, 0x10, １２, 1e999999999, "
                  f"200,000 digits…), {len(good)} that are", sandbox, set(expected), letters)
    assert row["duplicates"] == 0 and row["lost"] == 0 and row["dead_lettered"] == len(bad)
