"""The transform: a realistic WDT stockout gives exactly the expected BIP JSON; every bad input is a
permanent MappingError naming the field, the value and the mapping entry."""
from __future__ import annotations

import json
import pickle
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.core.errors import Action, MappingError, resolve
from shared.mapping.model import load_mapping, parse_mapping
from shared.wdt.models import Stockout
from worker.transform import TransformError, preview, resubmit_key, to_bip, validate_stockout

ROOT = Path(__file__).resolve().parents[2]
DEMO_TEXT = (ROOT / "ops" / "demo_data" / "mapping.toml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def demo():
    return load_mapping(ROOT / "ops" / "demo_data" / "mapping.toml")


def mapping_with(*replacements: tuple[str, str]):
    text = DEMO_TEXT
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    return parse_mapping(text)


def wdt_stockout() -> dict:
    """One stockout as wdt.stockout.order.query sends it: every value a string, zero dates as zeros."""
    return {
        "stockout_id": "100231",
        "order_no": "CK2026110100012",
        "src_order_no": "JY2026110100008",
        "warehouse_no": "WH-BJ02",
        "status": "95",
        "consign_time": "2026-11-01 23:30:05",
        "order_type": "7",
        "order_type_name": "其他出库",
        "subtype": "0",
        "stockout_reason": "样品",
        "goods_count": "5.0000",
        "goods_total_amount": "62.5000",
        "goods_total_cost": "40.0000",
        "post_fee": "0.0000",
        "logistics_no": "",
        "package_fee": "0.0000",
        "receiver_name": "",
        "receiver_country": "0",
        "receiver_province": "",
        "receiver_city": "",
        "receiver_district": "",
        "receiver_address": "",
        "receiver_mobile": "",
        "receiver_telno": "",
        "receiver_zip": "",
        "weight": "0.0000",
        "remark": "样品出库 给华北客户",
        "outer_no": "",
        "operator_name": "张三",
        "logistics_type": "0",
        "logistics_code": "",
        "logistics_name": "",
        "modified": "2026-11-02 00:00:01",
        "details_list": [
            {
                "stockout_id": "100231",
                "rec_id": "556001",
                "spec_no": "SKU-0001",
                "goods_count": "3.0000",
                "sell_price": "12.5000",
                "brand_no": "BR01",
                "brand_name": "品牌一",
                "goods_name": "保温杯",
                "goods_no": "G-0001",
                "spec_name": "500ml",
                "spec_code": "S500",
                "cost_price": "8.0000",
                "total_amount": "37.5000",
                "weight": "0.0000",
                "remark": "",
                "goods_unit": "件",
                "batch_no": "B20261001",
                "batch_remark": "",
                "expire_date": "2027-10-01 00:00:00",
                "position_list": [
                    {
                        "position_id": "11",
                        "position_no": "A-01-01",
                        "position_goods_count": "3.0000",
                        "stockout_order_detail_id": "556001",
                        "rec_id": "9901",
                        "stock_spec_detail_id": "0",
                        "stockin_detail_id": "0",
                        "batch_id": "71",
                        "batch_no": "B20261001",
                        "cost_price": "8.0000",
                        "modified": "2026-11-01 23:30:05",
                        "v_stock_spec_detail_id": "0",
                        "expire_date": "2027-10-01 00:00:00",
                        "created": "2026-11-01 20:00:00",
                    }
                ],
            },
            {
                "stockout_id": "100231",
                "rec_id": "556002",
                "spec_no": "SKU-0002",
                "goods_count": "2",
                "sell_price": "12.5000",
                "brand_no": "",
                "brand_name": "",
                "goods_name": "杯盖",
                "goods_no": "G-0002",
                "spec_name": "",
                "spec_code": "",
                "cost_price": "0.0000",
                "total_amount": "25.0000",
                "weight": "0.0000",
                "remark": "破损换新",
                "goods_unit": "",
                "batch_no": "",
                "batch_remark": "",
                "expire_date": "0000-00-00 00:00:00",
                "position_list": [],
            },
        ],
    }


EXPECTED_WIRE = {
    "_status": "Insert",
    "resubmitCheckKey": "wdtso-100231",
    "org": "ORG-NORTH",
    "accountOrg": "ORG-NORTH",
    "vouchdate": "2026-11-01",
    "bustype": "A10001",
    "warehouse": "BJ02",
    "memo": "样品出库 给华北客户",
    "defines!define1": "100231",
    "othOutRecords": [
        {
            "_status": "Insert",
            "product": "SKU-0001",
            "product_cName": "保温杯",
            "qty": "3.0000",
            "unit": "PCS",
            "batchno": "B20261001",
            "invaliddate": "2027-10-01",
            "upcode": "CK2026110100012",
            "sourceautoid": "556001",
        },
        {
            "_status": "Insert",
            "product": "SKU-0002",
            "product_cName": "杯盖",
            "qty": "2",
            "unit": "PCS",
            "memo": "破损换新",
            "upcode": "CK2026110100012",
            "sourceautoid": "556002",
        },
    ],
}


def _floats(value) -> list:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


# -- the good path --------------------------------------------------------------------------------

def test_realistic_stockout_gives_exactly_the_expected_wire_json(demo):
    payload = preview(wdt_stockout(), demo)
    assert payload == EXPECTED_WIRE
    assert not _floats(payload)
    # and it survives JSON as it is (what the BIP client sends)
    assert json.loads(json.dumps(payload, ensure_ascii=False)) == EXPECTED_WIRE


def test_warehouse_without_override_uses_header_orgs(demo):
    raw = wdt_stockout()
    raw["warehouse_no"] = "WH-SH01"
    payload = preview(raw, demo)
    assert (payload["org"], payload["accountOrg"], payload["warehouse"]) == ("ORG-EAST", "ORG-EAST", "SH01")


def test_override_of_org_only():
    m = mapping_with(('org = "ORG-NORTH"\naccountOrg = "ORG-NORTH"', 'org = "ORG-NORTH"'))
    payload = preview(wdt_stockout(), m)
    assert (payload["org"], payload["accountOrg"]) == ("ORG-NORTH", "ORG-EAST")


def test_same_input_same_payload_and_survives_a_requeue(demo):
    first = preview(wdt_stockout(), demo)
    assert preview(wdt_stockout(), demo) == first
    # a dead letter keeps Stockout.wire(); requeueing validates that again
    requeued = validate_stockout(validate_stockout(wdt_stockout()).wire())
    assert to_bip(requeued, demo).wire() == first


@pytest.mark.invariant(5)
def test_vouchdate_is_the_beijing_date_whatever_the_zone_of_the_time(demo):
    stockout = validate_stockout(wdt_stockout())
    # 16:30 UTC on 1 November is 00:30 on 2 November in Beijing
    stockout = stockout.model_copy(update={"consign_time": datetime(2026, 11, 1, 16, 30, tzinfo=UTC)})
    assert to_bip(stockout, demo).vouchdate == "2026-11-02"


def test_vouchdate_from_modified():
    m = mapping_with(('vouchdate_from = "consign_time"', 'vouchdate_from = "modified"'))
    assert preview(wdt_stockout(), m)["vouchdate"] == "2026-11-02"


def test_send_code():
    m = mapping_with(("send_code = false", "send_code = true"))
    assert preview(wdt_stockout(), m)["code"] == "CK2026110100012"


def test_code_not_sent_by_default(demo):
    assert "code" not in preview(wdt_stockout(), demo)


def test_memo_template_and_truncation():
    m = mapping_with(
        ('bustype = "A10001"', 'bustype = "A10001"\nmemo = "WDT {order_no} {{{operator_name}}}: {remark}"')
    )
    assert preview(wdt_stockout(), m)["memo"] == "WDT CK2026110100012 {张三}: 样品出库 给华北客户"
    raw = wdt_stockout()
    raw["remark"] = "备" * 300
    assert preview(raw, m)["memo"] == ("WDT CK2026110100012 {张三}: " + "备" * 300)[:255]


def test_empty_memo_is_not_sent(demo):
    raw = wdt_stockout()
    raw["remark"] = "  "
    assert "memo" not in preview(raw, demo)


def test_long_line_remark_and_name_are_cut_not_rejected(demo):
    raw = wdt_stockout()
    raw["details_list"][0]["remark"] = "x" * 400
    raw["details_list"][0]["goods_name"] = "杯" * 400
    line = preview(raw, demo)["othOutRecords"][0]
    assert line["memo"] == "x" * 255 and line["product_cName"] == "杯" * 255


def test_material_codes_and_goods_no_and_sku():
    m = mapping_with(
        ('field = "spec_no"', 'field = "goods_no"\nsku_field = "spec_code"\n[material.codes]\n"G-0001" = "MAT-1"'),
    )
    lines = preview(wdt_stockout(), m)["othOutRecords"]
    assert lines[0]["product"] == "MAT-1" and lines[0]["productsku"] == "S500"
    assert lines[1]["product"] == "G-0002"  # not in the code map: sent unchanged
    assert "productsku" not in lines[1]  # empty spec_code


def test_units(demo):
    raw = wdt_stockout()
    raw["details_list"][0]["goods_unit"] = "箱"
    raw["details_list"][1]["goods_unit"] = " 个 "
    lines = preview(raw, demo)["othOutRecords"]
    assert [line["unit"] for line in lines] == ["BOX", "EA"]


def test_unmapped_unit_uses_the_default_only_when_asked():
    m = mapping_with(('default = "PCS"', 'default = "PCS"\nunmapped = "default"'))
    raw = wdt_stockout()
    raw["details_list"][0]["goods_unit"] = "套"
    assert preview(raw, m)["othOutRecords"][0]["unit"] == "PCS"


def test_identifier_of_exactly_64_characters_is_accepted(demo):
    raw = wdt_stockout()
    raw["details_list"][0]["batch_no"] = "B" * 64
    assert preview(raw, demo)["othOutRecords"][0]["batchno"] == "B" * 64


def test_wdt_extras_are_tolerated(demo):
    raw = wdt_stockout()
    raw["some_new_field"] = "x"
    raw["details_list"][0]["another"] = {"nested": 1}
    assert preview(raw, demo) == EXPECTED_WIRE


# -- bad input ------------------------------------------------------------------------------------

def _set(path: str, value):
    """A change to the raw stockout at a dotted path like details_list.0.goods_count."""

    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


_DELETE = object()

BAD_INPUTS = [
    # (id, change, expected field, substrings of the message)
    ("empty details_list", _set("details_list", []), "details_list", ["details_list is empty"]),
    ("no details_list", _set("details_list", _DELETE), "details_list", ["details_list is empty"]),
    ("non-numeric qty", _set("details_list.1.goods_count", "abc"), "details_list[1].goods_count",
     ["details_list[1].goods_count", "'abc'"]),
    ("negative qty", _set("details_list.1.goods_count", "-2.0000"), "details_list[1].goods_count",
     ["details_list[1].goods_count is -2.0000", "greater than zero"]),
    ("zero qty", _set("details_list.0.goods_count", "0.0000"), "details_list[0].goods_count",
     ["details_list[0].goods_count is 0.0000"]),
    ("empty qty", _set("details_list.0.goods_count", ""), "details_list[0].goods_count",
     ["details_list[0].goods_count is missing or empty"]),
    ("missing qty", _set("details_list.0.goods_count", _DELETE), "details_list[0].goods_count",
     ["details_list[0].goods_count is missing or empty"]),
    ("NaN qty", _set("details_list.0.goods_count", "NaN"), "details_list[0].goods_count",
     ["details_list[0].goods_count", "'NaN'"]),
    ("qty is a list", _set("details_list.1.goods_count", ["2"]), "details_list[1].goods_count",
     ["details_list[1].goods_count", "list", "['2']"]),
    ("details_list is a string", _set("details_list", "[]"), "details_list",
     ["details_list: input should be a valid list", "'[]'"]),
    ("a line is a string", _set("details_list.0", "SKU-0001"), "details_list[0]",
     ["details_list[0]: expected a JSON object, got 'SKU-0001'"]),
    ("unknown warehouse", _set("warehouse_no", "WH-XX99"), "warehouse_no",
     ["warehouse_no 'WH-XX99' has no entry in [warehouses] of mapping.toml"]),
    ("empty warehouse", _set("warehouse_no", ""), "warehouse_no", ["warehouse_no is empty"]),
    ("missing consign_time", _set("consign_time", _DELETE), "consign_time",
     ["consign_time is missing", 'vouchdate_from = "consign_time"']),
    ("zero consign_time", _set("consign_time", "0000-00-00 00:00:00"), "consign_time",
     ["consign_time is '0000-00-00 00:00:00'", "status 95"]),
    ("malformed consign_time", _set("consign_time", "2026/11/01"), "consign_time",
     ["consign_time: expected 'yyyy-MM-dd HH:mm:ss', got '2026/11/01'"]),
    ("consign_time a number", _set("consign_time", 1762011005), "consign_time",
     ["consign_time: expected 'yyyy-MM-dd HH:mm:ss', got int 1762011005"]),
    ("malformed expire_date", _set("details_list.0.expire_date", "2027-13-01 00:00:00"), "details_list[0].expire_date",
     ["details_list[0].expire_date: expected 'yyyy-MM-dd HH:mm:ss', got '2027-13-01 00:00:00'"]),
    ("empty stockout_id", _set("stockout_id", ""), "stockout_id", ["stockout_id: empty"]),
    ("missing stockout_id", _set("stockout_id", _DELETE), "stockout_id", ["stockout_id: missing"]),
    ("blank stockout_id", _set("stockout_id", "  "), "stockout_id", ["stockout_id:", "'  '"]),
    ("stockout_id a list", _set("stockout_id", ["1"]), "stockout_id", ["stockout_id:", "['1']"]),
    ("empty material", _set("details_list.1.spec_no", " "), "details_list[1].spec_no",
     ["details_list[1].spec_no is empty", '[material].field = "spec_no"']),
    ("long material", _set("details_list.0.spec_no", "S" * 65), "details_list[0].spec_no",
     ["details_list[0].spec_no is 65 characters", "longer than the 64"]),
    ("long batch", _set("details_list.0.batch_no", "B" * 65), "details_list[0].batch_no",
     ["details_list[0].batch_no is 65 characters"]),
    ("long order_no", _set("order_no", "O" * 65), "order_no", ["order_no is 65 characters"]),
    ("long rec_id", _set("details_list.1.rec_id", "9" * 65), "details_list[1].rec_id",
     ["details_list[1].rec_id is 65 characters"]),
    ("unknown unit", _set("details_list.0.goods_unit", "套"), "details_list[0].goods_unit",
     ["details_list[0].goods_unit '套' has no entry in [units.codes] of mapping.toml"]),
    ("cancelled", _set("status", "5"), "status", ["status 5 not in [95, 110]", "[filters].statuses"]),
    ("no status", _set("status", ""), "status", ["status (empty) not in [95, 110]"]),
    ("batches that do not add up", _set("details_list.0.position_list", [
        {"batch_no": "B1", "position_goods_count": "1"}, {"batch_no": "B2", "position_goods_count": "1"}]),
     "details_list[0].position_list", ["details_list[0].position_list ships batches B1: 1, B2: 1",
                                       "goods_count 3"]),
]


@pytest.mark.parametrize("change,field,parts", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_mapping_error_naming_field_and_value(demo, change, field, parts):
    raw = wdt_stockout()
    change(raw)
    with pytest.raises(MappingError) as info:
        preview(raw, demo)
    err = info.value
    assert isinstance(err, TransformError)
    for part in parts:
        assert part in str(err), f"{part!r} not in {str(err)!r}"
    assert err.field == field
    # permanent: straight to the dead letters, never retried
    assert err.should_retry is False
    assert resolve(err, 1).action is Action.FAIL


def test_unknown_unit_and_no_default():
    m = mapping_with(('default = "PCS"\n', ""))
    raw = wdt_stockout()
    raw["details_list"][0]["goods_unit"] = "套"
    with pytest.raises(
        MappingError,
        match=r"details_list\[0\]\.goods_unit '套' has no entry in \[units.codes\] of mapping.toml"
        r" and \[units\] has no default",
    ):
        preview(raw, m)
    raw = wdt_stockout()  # line 1 has an empty unit
    with pytest.raises(
        MappingError, match=r"details_list\[1\]\.goods_unit is empty and \[units\] has no default"
    ) as info:
        preview(raw, m)
    assert info.value.mapping_entry == "units.default"


def test_unknown_warehouse_names_the_entry_to_add(demo):
    raw = wdt_stockout()
    raw["warehouse_no"] = "WH-XX99"
    with pytest.raises(TransformError) as info:
        preview(raw, demo)
    assert info.value.value == "WH-XX99"
    assert info.value.mapping_entry == 'warehouses."WH-XX99"'
    assert '[warehouses."WH-XX99"]' in str(info.value)


def test_order_type_filter_in_the_transform():
    m = mapping_with(("order_types = []", "order_types = [2]"))
    with pytest.raises(TransformError, match=r"order_type 7 not in \[2\]") as info:
        preview(wdt_stockout(), m)
    assert info.value.mapping_entry == "filters.order_types"


def test_send_code_with_empty_order_no():
    m = mapping_with(("send_code = false", "send_code = true"))
    raw = wdt_stockout()
    raw["order_no"] = ""
    with pytest.raises(TransformError, match=r"order_no is empty but \[document\].send_code = true needs it"):
        preview(raw, m)


def test_several_bad_fields_are_all_listed():
    raw = wdt_stockout()
    raw["stockout_id"] = ""
    raw["consign_time"] = "2026/11/01"
    raw["details_list"][1]["goods_count"] = "x"
    with pytest.raises(TransformError) as info:
        validate_stockout(raw)
    message = str(info.value)
    assert message.startswith("invalid stockout from WDT: ")
    assert "stockout_id: empty" in message
    assert "consign_time: expected 'yyyy-MM-dd HH:mm:ss', got '2026/11/01'" in message
    assert "details_list[1].goods_count: not a plain decimal" in message and message.endswith("got 'x'")


def test_validation_error_names_the_stockout():
    raw = wdt_stockout()
    raw["consign_time"] = "yesterday"
    with pytest.raises(TransformError, match=r"^invalid stockout '100231' from WDT: consign_time"):
        validate_stockout(raw)


@pytest.mark.parametrize("raw", [None, [], "stockout", 42])
def test_not_an_object(raw, demo):
    with pytest.raises(TransformError, match="expected a JSON object"):
        preview(raw, demo)


def test_transform_error_keeps_its_fields_across_pickling(demo):
    raw = wdt_stockout()
    raw["warehouse_no"] = "WH-XX99"
    with pytest.raises(TransformError) as info:
        preview(raw, demo)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is TransformError and str(again) == str(info.value)
    assert (again.field, again.value, again.mapping_entry) == ("warehouse_no", "WH-XX99", 'warehouses."WH-XX99"')
    data = again.to_dict()
    assert data["error"] == "TransformError" and data["field"] == "warehouse_no" and data["should_retry"] is False
    json.dumps(data)


def test_to_bip_takes_a_validated_stockout(demo):
    stockout = Stockout.model_validate(wdt_stockout())
    record = to_bip(stockout, demo)
    assert record.define1 == "100231" and record.resubmitCheckKey == resubmit_key("100231")


# -- resubmit_key ---------------------------------------------------------------------------------

def test_resubmit_key_readable_when_it_fits():
    assert resubmit_key("100231") == "wdtso-100231"
    assert resubmit_key("A" * 26) == "wdtso-" + "A" * 26
    assert len(resubmit_key("A" * 26)) == 32


@pytest.mark.parametrize("stockout_id", ["A" * 27, "A" * 40, "单号1", "a-b", "a b", "1/2", "WDT:1"])
def test_resubmit_key_hashed_when_not(stockout_id):
    key = resubmit_key(stockout_id)
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key == resubmit_key(stockout_id)


def test_resubmit_key_stable_short_and_distinct():
    ids = [str(n) for n in range(200_000)]
    ids += [f"{n:040d}" for n in range(20_000)]  # long: hashed
    ids += ["X" * k for k in range(1, 41)]  # both sides of the 26-character edge
    ids += [f"出库{n}" for n in range(1_000)]
    ids += [f"a-{n}" for n in range(1_000)]
    keys = [resubmit_key(i) for i in ids]
    assert all(0 < len(k) <= 32 for k in keys)
    assert len(set(keys)) == len(set(ids))
    assert keys == [resubmit_key(i) for i in ids]  # stable: a function of the id alone
    # readable and hashed forms cannot meet: the readable ones carry non-hex characters
    assert not any(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys if k.startswith("wdtso-"))


@pytest.mark.parametrize("bad", ["", None, 100231])
def test_resubmit_key_refuses_no_id(bad):
    with pytest.raises(ValueError):
        resubmit_key(bad)


def test_a_line_picked_from_two_batches_becomes_two_bip_lines(demo):
    raw = wdt_stockout()
    raw["details_list"][0]["goods_count"] = "3.0000"
    raw["details_list"][0]["position_list"] = [
        {"batch_no": "B1", "position_goods_count": "1.0000", "expire_date": "2027-01-31 00:00:00"},
        {"batch_no": "B2", "position_goods_count": "2.0000", "expire_date": "2027-03-31 00:00:00"},
    ]
    lines = preview(raw, demo)["othOutRecords"]
    first = [line for line in lines if line["sourceautoid"] == raw["details_list"][0]["rec_id"]]
    assert [(line["batchno"], line["qty"], line["invaliddate"]) for line in first] == [
        ("B1", "1.0000", "2027-01-31"), ("B2", "2.0000", "2027-03-31")]
    assert len(lines) == len(raw["details_list"]) + 1


def test_resubmit_key_generations_are_new_keys_of_the_same_stockout(demo):
    assert resubmit_key("100231", 0) == resubmit_key("100231") == "wdtso-100231"
    assert resubmit_key("100231", 1) == "wdtso-100231-g1" and resubmit_key("100231", 12) == "wdtso-100231-g12"
    long_id = "A" * 26  # fits readable at generation 0 only
    assert resubmit_key(long_id, 1) != resubmit_key(long_id) and re.fullmatch(r"[0-9a-f]{32}", resubmit_key(long_id, 1))
    ids = [str(n) for n in range(2_000)] + ["X" * k for k in range(20, 30)] + [f"出库{n}" for n in range(200)]
    keys = [resubmit_key(i, g) for i in ids for g in range(4)]
    assert all(0 < len(k) <= 32 for k in keys) and len(set(keys)) == len(keys)
    assert keys == [resubmit_key(i, g) for i in ids for g in range(4)]  # stable: no attempt, no clock
    record = to_bip(Stockout.model_validate(wdt_stockout()), demo, generation=2)
    assert record.resubmitCheckKey == "wdtso-100231-g2"


@pytest.mark.parametrize("bad", [-1, True, "1", 1.0])
def test_resubmit_key_refuses_a_bad_generation(bad):
    with pytest.raises(ValueError, match="generation"):
        resubmit_key("100231", bad)
