"""deploy/prometheus-rules.yml and deploy/grafana-dashboard.json: promtool checks and tests the rules (when
`make test` could fetch it), and every metric they name is one our exporters really serve."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from shared.metrics import make_all
from shared.settings import Settings
from shared.state_metrics import PipelineCollector
from tests.prerequisites import prerequisite

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
_METRIC = re.compile(r"\bstockout_sync_[a-z_]+")
_PROMTOOL = shutil.which("promtool") or (str(ROOT / ".venv" / "bin" / "promtool")
                                          if (ROOT / ".venv" / "bin" / "promtool").exists() else None)


def served_names(fake_redis) -> set[str]:
    """Every sample name the worker's and beat's /metrics can show (counters' _total, histograms' _bucket…)."""
    registry = make_all()
    names = {s.name for family in registry.collect() for s in family.samples}
    names |= {f.name + suffix for f in registry.collect() for suffix in ("_total", "_bucket", "_sum", "_count")
              if f.type in ("counter", "histogram")}
    fake_redis.set("t:cursor", "2026-11-29 10:00:00")
    fake_redis.set("t:poll:last", json.dumps({"started_at": "2026-11-29 10:00:00", "duration_s": 1.0}))
    fake_redis.set("t:stats:last_saved_at", "1764381600.0")
    collector = PipelineCollector(Settings(redis_prefix="t"), client=fake_redis)
    state = list(collector.collect())
    assert state[0].samples[0].value == 1, "the state collector could not read its (fake) Redis"
    return names | {s.name for family in state for s in family.samples}


def named_in_rules() -> set[str]:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    return {m for rule in rules for m in _METRIC.findall(rule["expr"])}


def named_in_dashboard() -> set[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {m for p in panels for t in p["targets"] for m in _METRIC.findall(t["expr"])}


def test_every_rule_is_complete():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    names = []
    for group in groups:
        for rule in group["rules"]:
            assert {"alert", "expr", "for", "labels", "annotations"} <= rule.keys(), rule.get("alert")
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names)) >= 8


def test_every_metric_in_rules_and_dashboard_is_served(fake_redis):
    served = served_names(fake_redis)
    for where, named in (("rules", named_in_rules()), ("dashboard", named_in_dashboard())):
        assert named, where
        assert named <= served, f"{where} name metrics no exporter serves: {sorted(named - served)}"


def test_dashboard_panels_are_placed_and_queried():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["templating"]["list"][0]["type"] == "datasource"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


@prerequisite(_PROMTOOL is not None, "promtool not installed (`make test` fetches it where apt is available)")
def test_promtool_checks_and_tests_the_rules():
    check = subprocess.run([_PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([_PROMTOOL, "test", "rules", str(RULES.with_name("prometheus-rules.test.yml"))],
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
