"""The sandbox's generator and master data: deterministic, complete, and broken only where asked."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from sandbox.data import (
    BAD_EMPTY_DETAILS,
    BAD_KINDS,
    BAD_MATERIAL,
    BAD_UNKNOWN_MATERIAL,
    BAD_UNKNOWN_WAREHOUSE,
    BAD_WAREHOUSE,
    BATCH_MANAGED,
    BIP_UNITS,
    BIP_WAREHOUSES,
    DETAIL_FIELDS,
    EXTRA_STOCKOUT_FIELDS,
    FETCHED_STATUSES,
    MASTER,
    MATERIALS,
    ORDER_TYPES,
    POSITION_FIELDS,
    STATUSES,
    STOCKOUT_FIELDS,
    UNIT_MAP,
    WAREHOUSE_MAP,
    WDT_UNITS,
    WDT_WAREHOUSES,
    generate_stockouts,
)
from shared.core.timeutil import BEIJING, ZERO_DATETIME, parse_wire
from shared.wdt.models import Stockout

START = datetime(2026, 11, 28, 8, 0, 0, tzinfo=BEIJING)
END = START + timedelta(hours=24)


def _batch(count=200, bad=0, seed=7, first_id=1_000_001):
    return generate_stockouts(count, first_id=first_id, seed=seed, bad=bad, start=START, end=END)


def _walk_strings(value, path="$"):
    """Every leaf that is not a string, with where it is."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_strings(v, f"{path}[{i}]")
    elif not isinstance(value, str):
        yield path, value


def test_same_seed_same_stockouts_and_other_seed_differs():
    assert _batch(seed=7).stockouts == _batch(seed=7).stockouts
    assert _batch(seed=7, bad=9).bad_reasons == _batch(seed=7, bad=9).bad_reasons
    assert _batch(seed=8).stockouts != _batch(seed=7).stockouts


def test_every_seed_field_present_and_every_value_a_string():
    for stockout in _batch().stockouts:
        assert set(stockout) == set(STOCKOUT_FIELDS) | set(EXTRA_STOCKOUT_FIELDS)
        for line in stockout["details_list"]:
            assert set(line) == set(DETAIL_FIELDS)
            assert 1 <= len(line["position_list"]) <= 2
            for position in line["position_list"]:
                assert set(position) == set(POSITION_FIELDS)
        assert list(_walk_strings(stockout)) == []


def test_ids_unique_increasing_and_order_numbers_unique():
    stockouts = _batch(count=50, first_id=5_000).stockouts
    assert [s["stockout_id"] for s in stockouts] == [str(5_000 + i) for i in range(50)]
    assert len({s["order_no"] for s in stockouts}) == 50
    assert all(s["order_no"].startswith("CK") and s["order_no"][2:10].isdigit() for s in stockouts)


def test_times_inside_the_window_and_consistent():
    for s in _batch().stockouts:
        modified, created = parse_wire(s["modified"]), parse_wire(s["created"])
        assert START <= modified <= END
        assert START <= created <= modified
        if s["status"] in ("95", "110", "113"):
            assert created <= parse_wire(s["consign_time"]) <= modified
        else:
            assert s["consign_time"] == ZERO_DATETIME


def test_mostly_fetched_statuses_and_other_outbound():
    stockouts = _batch(count=400).stockouts
    statuses = Counter(s["status"] for s in stockouts)
    assert set(statuses) <= set(STATUSES)
    assert sum(statuses[s] for s in FETCHED_STATUSES) > 0.7 * len(stockouts)
    assert {"5", "55", "113"} & set(statuses)
    types = Counter(s["order_type"] for s in stockouts)
    assert types["7"] > 0.5 * len(stockouts) and len(types) > 3
    assert all(s["order_type_name"] == ORDER_TYPES[s["order_type"]] for s in stockouts)


def test_lines_amounts_batches_and_positions():
    for s in _batch().stockouts:
        assert s["warehouse_no"] in WDT_WAREHOUSES
        lines = s["details_list"]
        assert 1 <= len(lines) <= 5
        assert len({line["spec_no"] for line in lines}) == len(lines)
        assert Decimal(s["goods_count"]) == sum(Decimal(line["goods_count"]) for line in lines)
        for line in lines:
            material = MATERIALS[line["spec_no"]]
            assert line["goods_count"].endswith(".0000") and Decimal(line["goods_count"]) > 0
            assert line["goods_unit"] == material.wdt_unit and line["goods_no"] == material.goods_no
            assert line["stockout_id"] == s["stockout_id"]
            assert any("\u4e00" <= ch <= "\u9fff" for ch in line["goods_name"])
            if line["spec_no"] in BATCH_MANAGED:
                assert line["batch_no"] and line["expire_date"] != ZERO_DATETIME
            else:
                assert line["batch_no"] == "" and line["expire_date"] == ZERO_DATETIME
            positions = line["position_list"]
            assert sum(Decimal(p["position_goods_count"]) for p in positions) == Decimal(line["goods_count"])
            assert all(p["stockout_order_detail_id"] == line["rec_id"] for p in positions)


def test_generated_stockouts_parse_with_the_service_model():
    for raw in _batch(count=30, bad=3).stockouts:
        assert Stockout.model_validate(raw).stockout_id == raw["stockout_id"]


def test_bad_ones_are_fetched_and_broken_one_way_each_in_turn():
    batch = _batch(count=60, bad=9)
    by_id = {s["stockout_id"]: s for s in batch.stockouts}
    assert len(batch.bad_reasons) == 9
    assert Counter(batch.bad_reasons.values()) == dict.fromkeys(BAD_KINDS, 3)
    ordered = sorted(batch.bad_reasons, key=int)
    assert [batch.bad_reasons[i] for i in ordered] == list(BAD_KINDS) * 3
    for sid, reason in batch.bad_reasons.items():
        s = by_id[sid]
        assert s["status"] in FETCHED_STATUSES
        if reason == BAD_UNKNOWN_WAREHOUSE:
            assert s["warehouse_no"] == BAD_WAREHOUSE
        elif reason == BAD_UNKNOWN_MATERIAL:
            assert s["details_list"][0]["spec_no"] == BAD_MATERIAL
            assert MASTER.code_of("product", BAD_MATERIAL) is None
        else:
            assert reason == BAD_EMPTY_DETAILS and s["details_list"] == []
    for sid, s in by_id.items():
        if sid not in batch.bad_reasons:
            assert s["warehouse_no"] != BAD_WAREHOUSE and s["details_list"]
            assert all(line["spec_no"] in MATERIALS for line in s["details_list"])


def test_bad_larger_than_count_is_refused():
    with pytest.raises(ValueError):
        _batch(count=2, bad=3)


def test_default_window_is_the_last_day_ending_ten_minutes_ago():
    now = datetime.now(BEIJING)
    batch = generate_stockouts(20, first_id=1, seed=1)
    for s in batch.stockouts:
        modified = parse_wire(s["modified"])
        assert now - timedelta(hours=24, minutes=11) <= modified <= now - timedelta(minutes=9)


def test_master_data_accepts_code_or_id_and_the_maps_close():
    assert MASTER.code_of("warehouse", "SH01") == "SH01"
    assert MASTER.code_of("warehouse", BIP_WAREHOUSES["BJ02"]["id"]) == "BJ02"
    assert MASTER.code_of("product", MATERIALS["SKU-0003"].id) == "SKU-0003"
    assert MASTER.code_of("warehouse", "WH-SH01") is None  # the WDT code is not BIP's
    assert MASTER.code_of("org", "ORG-EAST") == "ORG-EAST"
    assert MASTER.code_of("bustype", "A10001") == "A10001"
    assert set(WAREHOUSE_MAP) == set(WDT_WAREHOUSES) and set(WAREHOUSE_MAP.values()) == set(BIP_WAREHOUSES)
    assert set(UNIT_MAP) == set(WDT_UNITS) and set(UNIT_MAP.values()) == set(BIP_UNITS)
    assert sorted(MATERIALS) == [f"SKU-{n:04d}" for n in range(1, 51)]
    assert {f"SKU-{n:04d}" for n in range(41, 51)} == BATCH_MANAGED
    for material in MATERIALS.values():
        assert len(material.id) == 19 and material.bip_unit == UNIT_MAP[material.wdt_unit]
