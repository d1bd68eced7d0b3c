"""The mapping file: the shipped files load, every mistake a person can make names file, key and value."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.mapping.model import Mapping, MappingFileError, load_mapping, parse_mapping

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "ops" / "demo_data" / "mapping.toml"
EXAMPLE = ROOT / "mapping.example.toml"


def demo_text() -> str:
    return DEMO.read_text(encoding="utf-8")


def problem(text: str, name: str = "mapping.toml") -> str:
    with pytest.raises(MappingFileError) as info:
        parse_mapping(text, name)
    return str(info.value)


# -- the shipped files ----------------------------------------------------------------------------

def test_demo_mapping_fits_the_sandbox_master_data():
    m = load_mapping(DEMO)
    assert (m.header.org, m.header.accountOrg, m.header.bustype) == ("ORG-EAST", "ORG-EAST", "A10001")
    warehouses = {k: v.warehouse for k, v in m.warehouses.items()}
    assert warehouses == {"WH-SH01": "SH01", "WH-BJ02": "BJ02", "WH-GZ03": "GZ03"}
    assert (m.warehouses["WH-BJ02"].org, m.warehouses["WH-BJ02"].accountOrg) == ("ORG-NORTH", "ORG-NORTH")
    assert m.warehouses["WH-SH01"].org is None and m.warehouses["WH-GZ03"].accountOrg is None
    assert m.material.field == "spec_no" and m.material.codes == {} and m.material.sku_field is None
    assert m.units.default == "PCS"
    assert m.units.codes == {"件": "PCS", "箱": "BOX", "个": "EA"}
    assert m.filters.statuses == ["95", "110"] and m.filters.order_types == []
    assert m.document.send_code is False and m.document.vouchdate_from == "consign_time"
    assert m.source == "mapping.toml"


def test_example_mapping_loads():
    m = load_mapping(EXAMPLE)
    assert m.header.org and m.warehouses and m.units.codes


def test_example_mapping_still_loads_with_every_optional_key_uncommented():
    # The commented-out keys are documentation; a user who uncomments one must get a valid file.
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented, n = re.subn(r'(?m)^# ("?[\w!-]+"? = )', r"\1", text)
    assert n >= 5
    m = parse_mapping(uncommented, "mapping.example.toml")
    assert m.header.memo == "WDT {order_no}: {remark}"
    assert m.bustypes and m.fields and m.line_fields and m.warehouses["WH-BJ02"].bustypes
    assert m.material.codes == {"SKU-OLD-0001": "SKU-0001"}
    assert m.material.sku_field == "spec_code"


# -- fingerprint ----------------------------------------------------------------------------------

def test_fingerprint_is_stable_and_ignores_layout():
    a = parse_mapping(demo_text())
    reformatted = demo_text().replace("statuses = [95, 110]", 'statuses = ["95", "110"]')
    reformatted = "# a comment\n" + reformatted.replace('org = "ORG-EAST"', 'org   =   "ORG-EAST"')
    b = parse_mapping(reformatted, "other-name.toml")
    assert a.fingerprint() == b.fingerprint() == load_mapping(DEMO).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", a.fingerprint())


def test_fingerprint_changes_with_content():
    a = parse_mapping(demo_text())
    b = parse_mapping(demo_text().replace('warehouse = "GZ03"', 'warehouse = "GZ04"'))
    assert a.fingerprint() != b.fingerprint()


# -- mistakes -------------------------------------------------------------------------------------

MISTAKES = [
    # (what, change to the demo file, substrings the message must contain)
    ("missing header key", lambda t: t.replace('bustype = "A10001"\n', ""),
     ["mapping.toml: header.bustype: field required"]),
    ("typo in a key", lambda t: t.replace("bustype =", "bustyp ="),
     ["mapping.toml: header.bustyp: unknown key", '"A10001"', "did you mean bustype?"]),
    ("typo in a warehouse key", lambda t: t.replace('warehouse = "BJ02"', 'warehous = "BJ02"'),
     ['mapping.toml: warehouses."WH-BJ02".warehouse: field required',
      'mapping.toml: warehouses."WH-BJ02".warehous: unknown key (value "BJ02")']),
    ("typo in a section", lambda t: t.replace("[document]", "[documents]"),
     ["mapping.toml: documents: unknown key", "did you mean document?"]),
    ("code written as a number", lambda t: t.replace('org = "ORG-EAST"', "org = 1001", 1),
     ["mapping.toml: header.org: input should be a valid string, got 1001", 'write codes in quotes: "1001"']),
    ("bool as a string", lambda t: t.replace("send_code = false", 'send_code = "no"'),
     ['mapping.toml: document.send_code: input should be a valid boolean, got "no"']),
    ("unknown material field", lambda t: t.replace('field = "spec_no"', 'field = "sku"'),
     ["mapping.toml: material.field:", "'spec_no' or 'goods_no'", 'got "sku"']),
    ("bad status", lambda t: t.replace("statuses = [95, 110]", 'statuses = [95, "9S"]'),
     ['mapping.toml: filters.statuses[1]: expected a number like 95 or "95", got "9S"']),
    ("empty statuses", lambda t: t.replace("statuses = [95, 110]", "statuses = []"),
     ["mapping.toml: filters.statuses:", "at least 1"]),
    ("blank code", lambda t: t.replace('warehouse = "GZ03"', 'warehouse = "  "'),
     ['mapping.toml: warehouses."WH-GZ03".warehouse: must not be empty, got "  "']),
    ("over-long code", lambda t: t.replace('warehouse = "GZ03"', f'warehouse = "{"G" * 65}"'),
     ['mapping.toml: warehouses."WH-GZ03".warehouse:', "at most 64 characters", '"GGGG']),
    ("unit code as a number", lambda t: t.replace('"个" = "EA"', '"个" = 5'),
     ['mapping.toml: units.codes."个": input should be a valid string, got 5']),
    ("no units at all",
     lambda t: t.replace('default = "PCS"\n', "").replace('"件" = "PCS"\n"箱" = "BOX"\n"个" = "EA"\n', ""),
     ["mapping.toml: units: set units.default or at least one entry in [units.codes]"]),
    ("unmapped=default without default", lambda t: t.replace('default = "PCS"', 'unmapped = "default"'),
     ['mapping.toml: units: unmapped = "default" needs units.default']),
    ("unknown memo placeholder",
     lambda t: t.replace('bustype = "A10001"', 'bustype = "A10001"\nmemo = "{order_no} {nope}"'),
     ["mapping.toml: header.memo: unknown placeholder {nope}", '"{order_no} {nope}"']),
    ("memo with an unbalanced brace",
     lambda t: t.replace('bustype = "A10001"', 'bustype = "A10001"\nmemo = "{order_no"'),
     ["mapping.toml: header.memo: not a valid template"]),
    ("warehouses as a string", lambda t: 'warehouses = "SH01"\n' + re.sub(r'(?s)\[warehouses\.".*?(?=# SKU)', "", t),
     ['mapping.toml: warehouses: input should be a valid dictionary, got "SH01"']),
    ("no header", lambda t: t.replace("[header]", "[ignored]"),
     ["mapping.toml: header: field required", "mapping.toml: ignored: unknown key"]),
]


@pytest.mark.parametrize("change,expected", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_mistakes_name_file_key_and_value(change, expected):
    text = change(demo_text())
    assert text != demo_text(), "the test's change did not apply"
    message = problem(text)
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
    # one line per problem, each naming the file
    assert all(line.startswith("mapping.toml: ") for line in message.splitlines())


def test_bad_toml_names_file_and_line():
    text = demo_text()
    line = text[: text.index("[units]")].count("\n") + 1
    message = problem(text.replace("[units]", "[units"))
    assert message.startswith("mapping.toml: not valid TOML:")
    assert f"line {line}," in message


def test_duplicate_key_is_bad_toml():
    message = problem(demo_text().replace('bustype = "A10001"', 'bustype = "A10001"\nbustype = "A10002"'))
    assert "not valid TOML" in message and "line" in message


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(MappingFileError) as info:
        load_mapping(missing)
    assert str(info.value).startswith(f"{missing}: file not found")
    assert "MAPPING_FILE" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(MappingFileError, match="cannot read the file"):
        load_mapping(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "mapping.toml"
    path.write_bytes(demo_text().encode("gb18030"))
    with pytest.raises(MappingFileError, match="not UTF-8"):
        load_mapping(path)


def test_file_name_in_messages_is_the_path_given(tmp_path):
    path = tmp_path / "prod-mapping.toml"
    path.write_text(demo_text().replace('bustype = "A10001"\n', ""), encoding="utf-8")
    with pytest.raises(MappingFileError) as info:
        load_mapping(path)
    assert str(info.value) == f"{path}: header.bustype: field required"
    assert info.value.problems == ["header.bustype: field required"]
    ok = tmp_path / "prod-mapping.toml"
    ok.write_text(demo_text(), encoding="utf-8")
    assert load_mapping(ok).source == "prod-mapping.toml"


def test_several_mistakes_are_all_reported():
    text = demo_text().replace('bustype = "A10001"\n', "").replace("send_code = false", "send_code = 1")
    message = problem(text)
    assert "header.bustype: field required" in message
    assert "document.send_code" in message
    assert len(message.splitlines()) == 2


def test_values_are_normalised():
    text = demo_text().replace("statuses = [95, 110]", 'statuses = ["095", 110]').replace(
        "order_types = []", 'order_types = [7, "3"]'
    ).replace('warehouse = "SH01"', 'warehouse = "  SH01 "')
    m = parse_mapping(text)
    assert m.filters.statuses == ["95", "110"]
    assert m.filters.order_types == ["7", "3"]
    assert m.warehouses["WH-SH01"].warehouse == "SH01"


def test_defaults_when_optional_sections_are_absent():
    m = Mapping.model_validate(
        {"header": {"org": "O", "accountOrg": "A", "bustype": "B"}, "warehouses": {"W": {"warehouse": "W1"}},
         "units": {"default": "PCS"}}
    )
    assert m.material.field == "spec_no"
    assert m.filters.statuses == ["95", "110"] and m.filters.order_types == []
    assert m.document.send_code is False and m.document.vouchdate_from == "consign_time"
    assert m.units.unmapped == "error"


# -- filters --------------------------------------------------------------------------------------

@pytest.fixture
def demo() -> Mapping:
    return load_mapping(DEMO)


@pytest.mark.parametrize(
    "raw,passes,reason",
    [
        ({"status": "95", "order_type": "7"}, True, ""),
        ({"status": "110", "order_type": "3"}, True, ""),
        ({"status": 95}, True, ""),
        ({"status": " 095 "}, True, ""),
        ({"status": "5"}, False, "status 5 not in [95, 110]"),
        ({"status": "55"}, False, "status 55 not in [95, 110]"),
        ({"status": "113"}, False, "status 113 not in [95, 110]"),
        # what the filter cannot read passes on, so the transform rejects it into the dead letters
        ({}, True, ""),
        ({"status": ""}, True, ""),
        ({"status": None}, True, ""),
        ({"status": ["95"]}, True, ""),
        ("not a dict", True, ""),
    ],
)
def test_status_filter(demo, raw, passes, reason):
    assert demo.passes_filters(raw) == (passes, reason)


def test_order_type_filter():
    m = parse_mapping(demo_text().replace("order_types = []", "order_types = [7, 2]"))
    assert m.passes_filters({"status": "95", "order_type": "7"}) == (True, "")
    assert m.passes_filters({"status": "95", "order_type": "3"}) == (False, "order_type 3 not in [7, 2]")
    # status is checked first and named first
    assert m.passes_filters({"status": "5", "order_type": "3"}) == (False, "status 5 not in [95, 110]")
