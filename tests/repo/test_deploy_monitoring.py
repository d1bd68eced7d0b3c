"""deploy/prometheus-rules.yml and deploy/grafana-dashboard.json: promtool checks and tests the rules (when
`make test` could fetch it), and every metric they name is one our exporters really serve."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from shared.core.metrics import make_all
from shared.core.settings import Settings
from shared.observe.gauges import PipelineCollector, breaker_family, process_family
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
    return names | {s.name for family in state for s in family.samples} | {
        s.name for s in process_family("worker").samples}


# Gauges another change adds, whose rule and panel are here already (none now: the clock check's is served).
AWAITED: set[str] = set()
# Every problem `stockout-sync status` can report (ops/status.py `problems`) → its rule and the metric
# its dashboard panel shows. A new problem adds a row here, a rule, a promtool test and a panel.
STATUS_PROBLEMS = {
    "workers missing": ("StockoutSyncNoWorker", "stockout_sync_process_up"),
    "no beat/producer": ("StockoutSyncNoBeat", "stockout_sync_process_up"),
    "beat's last poll too long ago": ("StockoutSyncNoSuccessfulPoll",
                                      "stockout_sync_last_poll_success_timestamp_seconds"),
    "cursor not set": ("StockoutSyncCursorUnset", "stockout_sync_cursor_lag_seconds"),
    "cursor lags": ("StockoutSyncCursorLag", "stockout_sync_cursor_lag_seconds"),
    "dead letters": ("StockoutSyncDeadLetters", "stockout_sync_dead_letters"),
    "mapping file invalid": ("StockoutSyncMappingFileInvalid", "stockout_sync_mapping_file_invalid"),
    "paused (breaker)": ("StockoutSyncBreakerOpen", "stockout_sync_breaker_state"),
    "state lost (breaker scope state)": ("StockoutSyncStateLost", "stockout_sync_breaker_state"),
    "clock skew": ("StockoutSyncClockSkew", "stockout_sync_clock_skew_seconds"),
    "polls reading an empty window": ("StockoutSyncIdlePolls", "stockout_sync_idle_polls"),
    "Redis may evict": ("StockoutSyncRedisEvicting", "stockout_sync_redis_evicting"),
    "Redis unreadable": ("StockoutSyncStateUnreadable", "stockout_sync_state_up"),
}


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
        assert named - AWAITED <= served, f"{where} name metrics no exporter serves: {sorted(named - served)}"
    assert not AWAITED & served, f"served now, take them out of AWAITED: {sorted(AWAITED & served)}"


def test_every_status_problem_has_a_rule_and_a_panel():
    rules = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tested = RULES.with_name("prometheus-rules.test.yml").read_text()
    panels = named_in_dashboard()
    for problem, (alert, metric) in STATUS_PROBLEMS.items():
        assert alert in rules and metric in rules[alert]["expr"], problem
        assert f"alertname: {alert}" in tested, f"{alert} has no promtool test"
        assert metric in panels, f"no panel shows {metric} ({problem})"


def test_the_breaker_gauge_has_a_series_per_scope_closed_ones_too():
    fields = {"mapping.state": "half_open", "state.state": "open", "state": "open", "api": "state"}
    samples = {(s.labels["api"], s.labels["state"]): s.value for s in breaker_family(fields).samples}
    assert samples[("bip", "closed")] == 1 and samples[("bip", "open")] == 0
    assert samples[("mapping", "half_open")] == 1
    assert samples[("state", "open")] == 1  # a scope the breaker holds is reported even before SCOPES names it


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
