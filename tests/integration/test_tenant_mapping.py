"""A tenant's mapping end to end: three stockout types booked under three bustypes with the tenant's
own header and line fields, checked record by record in the sandbox; and `mapping check` over a range
predicting exactly what the pipeline then dead-letters (the same stockouts, the same reasons)."""
from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from ops.processes import wait_until
from producer.poll import backfill
from producer.reconcile.run import Reconcile
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.conftest import reset_service_caches
from tests.integration.faults import eligible, saved
from tests.progress import pipeline

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = (ROOT / "ops" / "demo_data" / "mapping.toml").read_text(encoding="utf-8")
TYPE_NAMES = {"2": "调拨出库", "3": "采购退货出库", "7": "其他出库"}
BUSTYPE_OF = {"2": "A10002", "3": "A10003", "7": "A10001"}

TENANT = DEMO + '''
[bustypes]
"2" = "A10002"
"3" = "A10003"

[fields]
"defines!define2" = "{logistics_no}"
"defines!define3" = "{operator_name} / {order_type_name}"

[line_fields]
"defines!define1" = "{goods_no}"
'''


def use_mapping(monkeypatch, tmp_path, text: str) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("MAPPING_FILE", str(path))
    reset_service_caches()
    return path


def test_three_types_three_bustypes_and_the_tenants_fields_reach_bip(sandbox, processes, redis_client,
                                                                      monkeypatch, tmp_path):
    path = use_mapping(monkeypatch, tmp_path, TENANT)
    now = now_beijing()
    since, until = now - timedelta(hours=3), now - timedelta(minutes=1)
    stockouts = [s for s in sandbox.generate(45, start=since, end=until - timedelta(minutes=1))
                 if s["status"] in ("95", "110")]
    for i, s in enumerate(stockouts):
        s["order_type"] = ("2", "3", "7")[i % 3]
        s["order_type_name"] = TYPE_NAMES[s["order_type"]]
    sandbox.add_stockouts(stockouts)
    expected = eligible(stockouts)
    assert {s["order_type"] for s in stockouts} == {"2", "3", "7"} and len(expected) >= 9

    processes.worker(concurrency=4, env={"MAPPING_FILE": str(path)})
    summary = backfill(runtime(), publish_stockout, since, until)
    assert summary.published == len(expected)
    letters = DeadLetterStore(redis_client, "t")
    wait_until(lambda: expected <= set(saved(sandbox)), message="every stockout saved",
               progress=pipeline(sandbox, redis_client))
    assert letters.ids() == []

    records = {r["data"]["defines!define1"]: r["data"] for r in sandbox.records()}
    for s in stockouts:
        record = records[s["stockout_id"]]
        assert record["bustype"] == BUSTYPE_OF[s["order_type"]], s["stockout_id"]
        assert record["defines!define2"] == s["logistics_no"]
        assert record["defines!define3"] == f"{s['operator_name']} / {TYPE_NAMES[s['order_type']]}"
        goods_no = {d["rec_id"]: d["goods_no"] for d in s["details_list"]}
        assert {line["sourceautoid"] for line in record["othOutRecords"]} == set(goods_no)
        for line in record["othOutRecords"]:
            assert line["defines!define1"] == goods_no[line["sourceautoid"]]

    # reconcile compares the tenant's fields too: clean now, "changed" once a template changes
    assert Reconcile(runtime()).run(since, until).changed == []
    path.write_text(TENANT.replace("{operator_name} / {order_type_name}", "{operator_name}"), encoding="utf-8")
    later = path.stat().st_mtime + 2
    os.utime(path, (later, later))
    rt = runtime()
    wait_until(lambda: "{operator_name} /" not in str(rt.mapping.fields), 10, message="the new mapping read")
    changed = Reconcile(rt).run(since, until).changed
    assert {c.stockout_id for c in changed} == expected
    one = next(c for c in changed if c.stockout_id == stockouts[0]["stockout_id"])
    assert one.why.startswith("the tenant's [fields] differ from the mapping's values now: defines!define3 (BIP '")


# Everything the sandbox's stockouts use, except what the test takes away: WH-GZ03 and the unit 盒
# are not mapped, and [material.codes] (the whole list, unmapped = "error") lacks SKU-0007.
CLOSED = DEMO.replace('[warehouses."WH-GZ03"]\nwarehouse = "GZ03"\n', "").replace(
    'field = "spec_no"', 'field = "spec_no"\nunmapped = "error"'
) + "\n[material.codes]\n" + "".join(f'"SKU-{n:04d}" = "SKU-{n:04d}"\n' for n in range(1, 51) if n != 7)


def test_mapping_check_predicts_what_the_pipeline_dead_letters(sandbox, processes, redis_client, monkeypatch,
                                                               tmp_path, service):
    path = use_mapping(monkeypatch, tmp_path, CLOSED)
    now = now_beijing()
    since, until = now - timedelta(hours=3), now - timedelta(minutes=1)
    stockouts = sandbox.generate(60, bad=3, start=since, end=until - timedelta(minutes=1))
    shipped = [s for s in stockouts if s["status"] in ("95", "110") and s["details_list"]
               and s["stockout_id"] not in sandbox.bad_ids]
    for s in shipped[:3]:  # a unit nobody mapped
        s["details_list"][0]["goods_unit"] = "盒"
    shipped[3]["warehouse_no"] = "[bold]WH-9[/bold]\x1b[2J"  # WDT's text: printed as text, never as markup
    sandbox.add_stockouts(shipped[:4])
    env = {**service, "MAPPING_FILE": str(path)}

    as_json = cli(env, "mapping", "check", "--since", format_wire(since), "--until", format_wire(until), "--json")
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    text = cli(env, "mapping", "check", "--since", format_wire(since), "--until", format_wire(until))
    assert text.returncode == 1, text.stderr
    assert not sandbox.records(), "a check saves nothing"

    groups = {g["entry"]: g for g in report["groups"]}
    assert 'units.codes."盒"' in groups and groups['units.codes."盒"']["count"] >= 1
    assert 'warehouses."WH-XX99"' in groups  # the sandbox's own bad stockout
    assert 'warehouses."[bold]WH-9[/bold]\x1b[2J"' in groups
    assert 'warehouses."[bold]WH-9[/bold]\\x1b[2J": 1 stockout, e.g. ' in text.stdout and "\x1b" not in text.stdout
    assert 'material.codes."SKU-GHOST"' in groups
    assert any(entry.startswith("(stockout data) details_list") for entry in groups)
    for entry, group in groups.items():
        if "WH-9" in entry:
            continue
        examples = ", ".join(f["order_no"] or f["stockout_id"] for f in group["stockouts"][:3])
        noun = "stockout" if group["count"] == 1 else "stockouts"
        assert f"  {entry}: {group['count']} {noun}, e.g. {examples}\n" in text.stdout
    assert f"{report['passed']} would pass, {report['filtered_out']} filtered out, {report['failed']} would fail" \
        in text.stdout
    assert report["fetched"] == report["passed"] + report["filtered_out"] + report["failed"]
    assert report["fetched"] - report["filtered_out"] == len(eligible(stockouts))
    assert report["failed"] == sum(g["count"] for g in groups.values())
    predicted = {(f["stockout_id"], f["message"]) for g in groups.values() for f in g["stockouts"]}
    assert len(predicted) == report["failed"]

    # the pipeline over the same range
    processes.worker(concurrency=4, env={"MAPPING_FILE": str(path)})
    summary = backfill(runtime(), publish_stockout, since, until)
    assert summary.filtered_out == report["filtered_out"]
    letters = DeadLetterStore(redis_client, "t")
    ids = {sid for sid, _ in predicted}
    wait_until(lambda: ids <= set(letters.ids()) and len(saved(sandbox)) >= report["passed"],
               message="the predicted failures dead-lettered, the rest saved", progress=pipeline(sandbox, redis_client))
    dead = {(letter.stockout_id, letter.message) for letter in letters.all()}
    assert dead == predicted, "the same stockouts, the same reasons"
    assert all(letter.stage == "transform" for letter in letters.all())
    assert len(saved(sandbox)) == report["passed"]


def test_mapping_check_without_a_range_and_mapping_show(service, monkeypatch, tmp_path):
    path = use_mapping(monkeypatch, tmp_path, TENANT)
    env = {**service, "MAPPING_FILE": str(path)}
    ok = cli(env, "mapping", "check")
    assert ok.returncode == 0 and "valid (fingerprint" in ok.stdout, ok.stderr
    shown = cli(env, "mapping", "show")
    assert shown.returncode == 0, shown.stderr
    assert '"defines!define3" = "{operator_name} / {order_type_name}"' in shown.stdout
    assert re.search(r"# in force since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", shown.stdout)
    data = json.loads(cli(env, "mapping", "show", "--json").stdout)
    assert data["mapping"]["bustypes"] == {"2": "A10002", "3": "A10003"}
    assert data["mapping"]["units"]["unmapped"] == "error"  # a default, filled in

    path.write_text(TENANT.replace('"2" = "A10002"', '"2" = 7'), encoding="utf-8")
    bad = cli(env, "mapping", "check", "--json")
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["problems"] == ['bustypes."2": input should be a valid string, got 7 '
                                                  '(write codes in quotes: "7")']
