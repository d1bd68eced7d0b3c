"""A tenant's own mapping: bustype by order type and warehouse (precedence), the tenant's [fields] and
[line_fields] (templates, fixed values, refusals), material.unmapped, and a version-1 file unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.mapping.model import (
    LINE_FIELDS,
    MEMO_FIELDS,
    RESERVED_FIELDS,
    RESERVED_LINE_FIELDS,
    MappingFileError,
    load_mapping,
    parse_mapping,
)
from tests.unit.test_transform import DEMO_TEXT, EXPECTED_WIRE, wdt_stockout
from worker.transform import TransformError, preview

HERE = Path(__file__).resolve().parent
# mapping.example.toml as it was before [bustypes], [fields] and [line_fields] existed, copied verbatim
V1_EXAMPLE = HERE / "data" / "mapping_v1.example.toml"

BUSTYPES = DEMO_TEXT + '''
[bustypes]
"3" = "BT-PURCHASE-RETURN"
"07" = "BT-OTHER"

[warehouses."WH-GZ03".bustypes]
"3" = "BT-GZ-RETURN"
'''


def mapping(text: str = BUSTYPES):
    return parse_mapping(text)


def with_warehouse_bustype(text: str) -> str:
    old = '[warehouses."WH-GZ03"]\nwarehouse = "GZ03"\n'
    assert old in text
    return text.replace(old, old + 'bustype = "BT-GZ"\n')


def stockout(warehouse: str = "WH-SH01", order_type: str = "7", **changes) -> dict:
    raw = wdt_stockout()
    raw.update(warehouse_no=warehouse, order_type=order_type, **changes)
    return raw


# -- bustype --------------------------------------------------------------------------------------

@pytest.mark.parametrize("warehouse,order_type,expected,key", [
    ("WH-GZ03", "3", "BT-GZ-RETURN", 'warehouses."WH-GZ03".bustypes."3"'),  # warehouse + type
    ("WH-GZ03", "7", "BT-OTHER", 'bustypes."7"'),  # type beats warehouse
    ("WH-GZ03", "2", "BT-GZ", 'warehouses."WH-GZ03".bustype'),  # warehouse beats header
    ("WH-SH01", "3", "BT-PURCHASE-RETURN", 'bustypes."3"'),
    ("WH-SH01", "2", "A10001", "header.bustype"),  # nothing else: the header's default
])
def test_bustype_precedence(warehouse, order_type, expected, key):
    m = mapping(with_warehouse_bustype(BUSTYPES))
    assert preview(stockout(warehouse, order_type), m)["bustype"] == expected
    assert m.bustype_for(warehouse, order_type) == (expected, key)


def test_order_type_keys_are_normalised_like_the_filters():
    m = mapping()
    assert m.bustypes == {"3": "BT-PURCHASE-RETURN", "7": "BT-OTHER"}
    assert preview(stockout(order_type="07"), m)["bustype"] == "BT-OTHER"


def test_a_type_with_no_entry_and_no_default_is_a_dead_letter_naming_type_and_key():
    m = mapping(BUSTYPES.replace('bustype = "A10001"\n', ""))
    assert m.header.bustype is None
    assert preview(stockout(order_type="3"), m)["bustype"] == "BT-PURCHASE-RETURN"
    with pytest.raises(TransformError) as info:
        preview(stockout(order_type="4", order_type_name="盘亏出库"), m)
    err = info.value
    assert (err.field, err.value, err.mapping_entry) == ("order_type", "4", 'bustypes."4"')
    assert "order_type 4 (盘亏出库) has no bustype" in str(err)
    assert '[bustypes] "4" = "<BIP 交易类型 code>"' in str(err)


def test_header_bustype_stays_required_when_nothing_else_names_one():
    with pytest.raises(MappingFileError) as info:
        parse_mapping(DEMO_TEXT.replace('bustype = "A10001"\n', ""))
    assert info.value.problems == ["header.bustype: field required"]


@pytest.mark.parametrize("extra,expected", [
    ('[bustypes]\n"99" = "X"\n', 'bustypes."99": not a WDT order type, got 99'),
    ('[bustypes]\n"7" = 4\n', 'bustypes."7": input should be a valid string, got 4 (write codes in quotes: "4")'),
    ('[bustypes]\n"7" = ""\n', 'bustypes."7": must not be empty'),
    ('[warehouses."WH-SH01".bustypes]\n"x" = "B"\n', 'warehouses."WH-SH01".bustypes."x": expected a number'),
])
def test_bad_bustype_entries_name_key_and_value(extra, expected):
    with pytest.raises(MappingFileError) as info:
        parse_mapping(DEMO_TEXT + "\n" + extra)
    assert expected in str(info.value)


# -- the tenant's own fields ----------------------------------------------------------------------

FIELDS = DEMO_TEXT + '''
[fields]
"defines!define2" = "{logistics_no}"
"defines!define3" = "WDT {order_no} by {operator_name}"
"defines!define4" = { value = "fixed {not a placeholder}" }
"headItem!note" = "  {remark}  "
"defines!define5" = "{outer_no}"

[line_fields]
"defines!define1" = "{goods_no}/{spec_name}"
"free1" = "{batch_no}"
'''


def test_header_and_line_fields_from_templates_and_fixed_values():
    raw = stockout("WH-BJ02", logistics_no="SF1234567890", operator_name="张三")
    payload = preview(raw, mapping(FIELDS))
    assert payload["defines!define2"] == "SF1234567890"
    assert payload["defines!define3"] == "WDT CK2026110100012 by 张三"
    assert payload["defines!define4"] == "fixed {not a placeholder}"
    assert payload["headItem!note"] == "样品出库 给华北客户"  # trimmed
    assert "defines!define5" not in payload  # outer_no is empty: not sent
    assert payload["defines!define1"] == "100231"  # ours, untouched
    first, second = payload["othOutRecords"]
    assert (first["defines!define1"], first["free1"]) == ("G-0001/500ml", "B20261001")
    assert (second["defines!define1"], "free1" in second) == ("G-0002/", False)
    # everything else exactly as without the tables
    for name in ("defines!define2", "defines!define3", "defines!define4", "headItem!note"):
        payload.pop(name)
    for line in payload["othOutRecords"]:
        line.pop("defines!define1")
        line.pop("free1", None)
    assert payload == EXPECTED_WIRE


def test_line_fields_go_on_every_batch_line_of_the_wdt_line():
    raw = stockout("WH-BJ02")
    line = raw["details_list"][0]
    two = dict(line["position_list"][0])
    line["position_list"] = [dict(two, position_goods_count="1.0000"),
                             dict(two, batch_no="B2", position_goods_count="2.0000")]
    m = mapping(DEMO_TEXT + '\n[line_fields]\n"free2" = "{brand_name}"\n')
    lines = preview(raw, m)["othOutRecords"]
    assert [(x["batchno"], x["free2"]) for x in lines[:2]] == [("B20261001", "品牌一"), ("B2", "品牌一")]


@pytest.mark.parametrize("name", MEMO_FIELDS)
def test_every_header_placeholder_fills_a_field(name):
    raw = stockout()
    # stockout_id, status, warehouse_no and order_type must stay usable: the others take a padded value
    raw[name] = {"stockout_id": "v-id", "status": "95", "warehouse_no": "WH-SH01", "order_type": "7"}.get(
        name, f" v-{name} ")
    m = mapping(DEMO_TEXT + f'\n[fields]\n"free1" = "{{{name}}}"\n"free2" = "<{{{name}}}>"\n')
    payload = preview(raw, m)
    expected = str(raw[name]).strip()
    assert (payload["free1"], payload["free2"]) == (expected, f"<{expected}>")


@pytest.mark.parametrize("name", LINE_FIELDS)
def test_every_line_placeholder_fills_a_line_field(name):
    raw = stockout()
    raw["details_list"][1][name] = f" l-{name} "
    if name == "goods_unit":
        raw["details_list"][1][name] = "箱"
    m = mapping(DEMO_TEXT + f'\n[line_fields]\n"free1" = "{{{name}}}"\n')
    line = preview(raw, m)["othOutRecords"][1]
    assert line["free1"] == raw["details_list"][1][name].strip()


def test_text_values_are_cut_identifiers_are_refused():
    m = mapping(FIELDS)
    raw = stockout(operator_name="操" * 300)
    assert len(preview(raw, m)["defines!define3"]) == 255
    long = "L" * 65
    with pytest.raises(TransformError) as info:
        preview(stockout(logistics_no=long), m)
    err = info.value
    assert err.field == "logistics_no" and err.value == "L" * 64 + "…"  # the value kept bounded
    assert '[fields]."defines!define2" sends it' in str(err)
    assert "65 characters, longer than the 64" in str(err)
    assert len(str(err)) < 300
    assert preview(stockout(logistics_no="L" * 64), m)["defines!define2"] == "L" * 64
    raw = stockout()
    raw["details_list"][0]["batch_no"] = "B" * 65
    raw["details_list"][0]["position_list"] = []
    m = mapping(DEMO_TEXT + '\n[line_fields]\n"free1" = "{batch_no}"\n')
    with pytest.raises(TransformError) as info:
        preview(raw, m)
    assert info.value.field == "details_list[0].batch_no"


@pytest.mark.parametrize("name", sorted(RESERVED_FIELDS))
def test_names_we_set_are_refused_in_fields(name):
    with pytest.raises(MappingFileError) as info:
        parse_mapping(DEMO_TEXT + f'\n[fields]\n{json.dumps(name)} = "x"\n')
    assert f"fields.{json.dumps(name)}: set by stockout-sync itself ({RESERVED_FIELDS[name]})" in str(info.value)


@pytest.mark.parametrize("name", sorted(RESERVED_LINE_FIELDS))
def test_names_we_set_are_refused_in_line_fields(name):
    with pytest.raises(MappingFileError) as info:
        parse_mapping(DEMO_TEXT + f'\n[line_fields]\n{json.dumps(name)} = "x"\n')
    assert f"line_fields.{json.dumps(name)}: set by stockout-sync itself" in str(info.value)


@pytest.mark.parametrize("extra,expected", [
    ('[fields]\n"bad name" = "x"\n', 'fields."bad name": not a BIP field name'),
    ('[fields]\n"a!b!c" = "x"\n', 'fields."a!b!c": not a BIP field name'),
    ('[fields]\n"defines!define2" = "{receiver_mobile}"\n',
     'fields."defines!define2": unknown placeholder {receiver_mobile}'),
    ('[fields]\n"defines!define2" = "{remark!r}"\n', "unknown placeholder {remark!r}"),
    ('[fields]\n"defines!define2" = "{remark"\n', "not a valid template"),
    ('[fields]\n"defines!define2" = 5\n',
     'fields."defines!define2": expected a template in quotes or { value = "..." }'),
    ('[fields]\n"defines!define2" = { valu = "x" }\n', 'fields."defines!define2".valu: unknown key'),
    ('[line_fields]\n"free1" = "{order_no}"\n', 'line_fields."free1": unknown placeholder {order_no}'),
    ('[fields]\n"free1" = { value = "' + "x" * 256 + '" }\n', 'fields."free1".value: string should have at most 255'),
])
def test_bad_fields_are_refused_naming_key_and_value(extra, expected):
    with pytest.raises(MappingFileError) as info:
        parse_mapping(DEMO_TEXT + "\n" + extra)
    assert expected in str(info.value)


def test_the_line_may_carry_its_own_define1():
    m = mapping(DEMO_TEXT + '\n[line_fields]\n"defines!define1" = "{rec_id}"\n')
    assert [x["defines!define1"] for x in preview(stockout(), m)["othOutRecords"]] == ["556001", "556002"]


# -- material.unmapped ----------------------------------------------------------------------------

def test_material_unmapped_error_makes_the_codes_table_the_whole_list():
    m = mapping(DEMO_TEXT.replace('field = "spec_no"', 'field = "spec_no"\nunmapped = "error"')
                + '\n[material.codes]\n"SKU-0001" = "SKU-0001"\n')
    with pytest.raises(TransformError) as info:
        preview(stockout(), m)
    err = info.value
    assert (err.field, err.value, err.mapping_entry) == (
        "details_list[1].spec_no", "SKU-0002", 'material.codes."SKU-0002"')
    assert 'add "SKU-0002" = "<BIP material code>"' in str(err)


# -- files written for version 1 ------------------------------------------------------------------

def test_a_version_1_example_file_loads_unchanged_with_its_fingerprint():
    m = load_mapping(V1_EXAMPLE)
    assert m.fingerprint() == "f075385086f4f168"  # as version 1 computed it: its dead letters still match
    assert (m.bustypes, m.fields, m.line_fields, m.material.unmapped) == ({}, {}, {}, "send")
    assert m.bustype_for("WH-BJ02", "3") == ("A10001", "header.bustype")


def test_the_demo_mapping_keeps_its_fingerprint():
    assert parse_mapping(DEMO_TEXT).fingerprint() == "841d1b5530261608"


def test_the_example_file_loads_and_shows_each_new_table():
    root = HERE.parents[1]
    text = (root / "mapping.example.toml").read_text(encoding="utf-8")
    load_mapping(root / "mapping.example.toml")
    for table in ("[bustypes]", "[fields]", "[line_fields]", "unmapped ="):
        assert table in text


def test_mapping_show_prints_toml_that_reads_back_as_the_same_mapping():
    from ops.cli.mapping import toml_text

    for text in (FIELDS, with_warehouse_bustype(BUSTYPES), V1_EXAMPLE.read_text(encoding="utf-8")):
        m = parse_mapping(text)
        shown = toml_text(m.model_dump(mode="json"))
        assert parse_mapping(shown).fingerprint() == m.fingerprint(), shown


# -- the dry run's grouping -----------------------------------------------------------------------

def test_dry_run_counts_and_groups_by_the_entry_to_add():
    from ops.mapping_check import DATA, DryRun

    m = mapping(DEMO_TEXT.replace('[warehouses."WH-GZ03"]\nwarehouse = "GZ03"\n', ""))
    good = stockout("WH-SH01", stockout_id="1")
    cancelled = stockout(stockout_id="2", status="5")
    gz = [stockout("WH-GZ03", stockout_id=str(n), order_no=f"CK-{n}") for n in (3, 4)]
    box = stockout(stockout_id="5")
    box["details_list"][1]["goods_unit"] = "盒"
    no_qty = stockout(stockout_id="6")
    no_qty["details_list"][1]["goods_count"] = "0"
    run = DryRun(m, "mapping.toml")
    run.add([good, cancelled, *gz, box, no_qty, dict(good)])  # the repeat is counted once
    report = run.finish()
    assert (report.fetched, report.passed, report.filtered_out, report.failed) == (6, 1, 1, 4)
    assert [(g.entry, g.count) for g in report.groups] == [
        ('warehouses."WH-GZ03"', 2), (DATA + "details_list[].goods_count", 1), ('units.codes."盒"', 1)]
    assert [f.order_no for f in report.groups[0].stockouts] == ["CK-3", "CK-4"]
    assert report.groups[0].stockouts[0].message.startswith("warehouse_no 'WH-GZ03' has no entry in [warehouses]")
    assert report.exit_code == 1


def test_a_refused_bustype_is_located_in_the_mapping():
    from worker.transform import locate_rejection

    m = mapping()
    where = locate_rejection("交易类型[A10001]不存在", stockout(order_type="2"), m)
    assert where == "A10001 = order_type 2 via [header.bustype]"
    where = locate_rejection("交易类型[BT-PURCHASE-RETURN]不存在", stockout(order_type="3"), m)
    assert where == 'BT-PURCHASE-RETURN = order_type 3 via [bustypes."3"]'
