"""The Grafana dashboard, its provisioning, and the Prometheus config and alert rules.

Structure only: every panel documented, united and thresholded, every query on the
``${datasource}`` variable and filtered by ``$instance``, every metric name one that
``connector.metrics`` defines, every alert with a runbook section and promtool unit tests.
That the queries return data is checked against a real Prometheus in
``tests/integration/test_prometheus.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from connector.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "hitl-connector.json"
PROM_DIR = ROOT / "deploy" / "prometheus"
RUNBOOK = ROOT / "docs" / "operations.md"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ROWS = ["Overview", "Latency", "HITL API", "Errors", "Kafka"]
METRIC_RE = re.compile(r"\bhitl_connector_[a-z_]+")
SELECTOR_RE = re.compile(r"\b(hitl_connector_[a-z_]+)(\{[^}]*\})?")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    return [rule for g in groups for rule in g["rules"] if "alert" in rule]


def exported_names() -> set[str]:
    """Every sample name the connector can export (counters with ``_total``, etc.)."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "info": ("_info",),
        "histogram": ("_bucket", "_sum", "_count"),
    }
    metrics = Metrics(CollectorRegistry())
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in suffixes[family.type]
    }


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not on PATH (scripts/ensure_prometheus.sh installs it)")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_dashboard_identity_and_variables() -> None:
    d = dashboard()
    assert d["uid"] == "hitl-kafka-connector"
    assert d["schemaVersion"] >= 39
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, query in (
        ("instance", "label_values(hitl_connector_build_info, instance)"),
        ("loop", "label_values(hitl_connector_decision_latency_seconds_bucket, loop)"),
    ):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == DATASOURCE
        assert var["query"]["query"] == query
        assert var["includeAll"] and var["allValue"] == ".*"


def test_dashboard_has_the_rows_in_order() -> None:
    titles = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert titles == ROWS


def test_every_panel_has_description_unit_thresholds_and_the_datasource_variable() -> None:
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        title = panel["title"]
        defaults = panel["fieldConfig"]["defaults"]
        assert panel.get("description", "").strip(), f"{title}: no description"
        assert defaults.get("unit"), f"{title}: no unit"
        steps = defaults.get("thresholds", {}).get("steps", [])
        assert steps and steps[0]["value"] is None, f"{title}: thresholds need a base step"
        assert panel["datasource"] == DATASOURCE, f"{title}: panel datasource"
        assert panel["targets"], f"{title}: no queries"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{title}: target datasource"
            assert target["expr"].strip(), f"{title}: empty expr"
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{title}: wider than the grid"


def test_every_query_filters_every_selector_by_instance() -> None:
    for expr in exprs():
        for match in SELECTOR_RE.finditer(expr):
            labels = match.group(2) or ""
            assert 'instance=~"$instance"' in labels, f"{match.group(1)} unfiltered in: {expr}"


def test_loop_histograms_are_filtered_by_loop() -> None:
    for expr in exprs():
        for match in SELECTOR_RE.finditer(expr):
            if match.group(1).startswith(
                ("hitl_connector_decision_latency", "hitl_connector_human_response")
            ):
                assert 'loop=~"$loop"' in (match.group(2) or ""), expr


def test_dashboard_and_alerts_only_use_metrics_the_connector_exports() -> None:
    known = exported_names()
    used = set(METRIC_RE.findall(DASHBOARD.read_text()))
    used |= set(METRIC_RE.findall((PROM_DIR / "alerts.yml").read_text()))
    assert used - known == set()


def test_provisioning_points_at_prometheus_and_the_dashboards_dir() -> None:
    prov = ROOT / "grafana" / "provisioning"
    sources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    providers = yaml.safe_load((prov / "dashboards" / "hitl-connector.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_prometheus_config_scrapes_the_connector_and_loads_the_alerts() -> None:
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "hitl-connector"
    assert job["static_configs"][0]["targets"] == ["connector:8080"]


def test_every_alert_has_for_severity_and_a_runbook_section() -> None:
    headings = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("### ")
    }
    rules = alert_rules()
    assert len(rules) >= 8
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no 'for'"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/operations.md", name
        assert anchor in headings, f"{name}: no runbook section #{anchor}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a quiet test"


def test_promtool_check_config_and_rules() -> None:
    result = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "rules", str(PROM_DIR / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(PROM_DIR / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
