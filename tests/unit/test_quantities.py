"""Quantities exactly as written: only plain decimals are numbers; every other form (exponents, signs,
hex, non-ASCII digits, NaN, runaway lengths) is refused by its shape, before Decimal sees it, with a
bounded message naming the field."""
from __future__ import annotations

import json
import tracemalloc

import pytest

from shared.core.errors import Action, resolve
from shared.core.http import _int_or_text
from shared.wdt.models import MAX_NUMBER_CHARS
from tests.unit.test_transform import demo, wdt_stockout  # noqa: F401  (the fixture)
from worker.transform import TransformError, preview

REFUSED = ["1e3", "1E3", "NaN", "nan", "Infinity", "+2", "0x10", "１２", "٣", "1e999999", "1e999999999",
           "1_000", "1.", ".5", "1.2.3", "2 3", "9" * 29, "1" * (MAX_NUMBER_CHARS + 1), "7" * 100_000]
KEPT = {"3.0000": "3.0000", "2": "2", "0.5": "0.5", "12.345678": "12.345678", " 4.00 ": "4.00",
        "9" * 28: "9" * 28, "0.000001": "0.000001"}


def _with_qty(value) -> dict:
    raw = wdt_stockout()
    raw["details_list"] = [dict(raw["details_list"][0], goods_count=value, position_list=[])]
    return raw


@pytest.mark.parametrize("value", REFUSED, ids=[v[:20] for v in REFUSED])
def test_a_quantity_that_is_not_a_plain_decimal_is_refused_naming_the_line(demo, value):  # noqa: F811
    with pytest.raises(TransformError) as info:
        preview(_with_qty(value), demo)
    err = info.value
    assert err.field == "details_list[0].goods_count"
    assert "details_list[0].goods_count: not a plain decimal" in str(err)
    assert len(str(err)) < 400 and len(str(err.value)) <= 80, "the message is bounded"
    assert repr(value[:20])[1:-1] in str(err)  # the value (its start) is named
    assert resolve(err, 1).action is Action.FAIL


@pytest.mark.parametrize("value", [10**5000, float("nan"), float("inf"), 1e300], ids=["int", "nan", "inf", "1e300"])
def test_numbers_given_as_json_numbers_are_held_to_the_same_shape(demo, value):  # noqa: F811
    with pytest.raises(TransformError, match="not a plain decimal"):
        preview(_with_qty(value), demo)


@pytest.mark.parametrize(("given", "sent"), list(KEPT.items()))
def test_a_plain_decimal_goes_to_bip_as_written(demo, given, sent):  # noqa: F811
    record = preview(_with_qty(given), demo)
    assert record["othOutRecords"][0]["qty"] == sent


def test_every_number_field_is_held_to_the_shape(demo):  # noqa: F811
    raw = wdt_stockout()
    raw["details_list"][0]["sell_price"] = "1e3"
    with pytest.raises(TransformError, match=r"details_list\[0\]\.sell_price: not a plain decimal"):
        preview(raw, demo)


def test_no_quantity_costs_more_memory_than_a_normal_one(demo):  # noqa: F811
    def peak(value) -> int:
        raw = _with_qty(value)
        tracemalloc.start()
        try:
            preview(raw, demo)
        except TransformError:
            pass
        finally:
            _, top = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        return top

    normal = peak("3.0000")
    for value in ("1e999999999", "1e999999", "9" * 10_000):
        assert peak(value) < 2 * normal + 64_000, f"{value[:12]!r}: a refusal must not allocate for its value"


def test_wdt_replies_keep_json_numbers_as_their_text():
    text = '{"goods_count": 1e3, "n": 7, "big": ' + "9" * 5000 + ', "x": 1e999999999, "y": NaN}'
    parsed = json.loads(text, parse_float=str, parse_int=_int_or_text, parse_constant=str)
    assert parsed == {"goods_count": "1e3", "n": 7, "big": "9" * 5000, "x": "1e999999999", "y": "NaN"}
