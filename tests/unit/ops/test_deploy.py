"""The files of deploy/ (Prometheus rules, Grafana dashboards) are well formed and documented:
each alert has its runbook line and each panel its description in the README. Whether they
read real series and real tables is tested against a running daemon
(tests/integration/ops/test_dashboards.py, tests/integration/store/test_queries.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from promql import selectors

ROOT = Path(__file__).parents[3]
RULES_FILE = ROOT / "deploy" / "prometheus" / "cdrsync-rules.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
README = (ROOT / "README.md").read_text("utf-8")
SECTION = README.split("\n## Dashboards and alerts\n", 1)[1].split("\n## ", 1)[0]
# What the operators asked alerts for (issue 12), by alert name.
ALERTS = {
    "CdrsyncWatermarkLagHigh",  # lag over threshold
    "CdrsyncStreamStuck",
    "CdrsyncRateLimited",  # sustained 429s
    "CdrsyncRejectsGrowing",
    "CdrsyncPushesRefused",
    "CdrsyncNoSuccessfulCycle",
}


def all_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text("utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def panels(path: Path) -> list[dict[str, Any]]:
    doc = json.loads(path.read_text("utf-8"))
    return [p for p in doc["panels"] if p["type"] != "row"]


def test_the_rules_file_parses_into_the_alerts_asked_for() -> None:
    """The YAML loads as Prometheus rule groups holding exactly the six alerts."""
    names = [rule["alert"] for rule in all_rules()]
    assert sorted(names) == sorted(ALERTS)


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r["alert"])
def test_each_rule_is_complete(rule: dict[str, Any]) -> None:
    """An expression with selectors, a severity, a summary, a description and a runbook."""
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
    assert selectors(rule["expr"]), rule["expr"]
    assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m"))
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert set(rule["annotations"]) == {"summary", "description", "runbook"}
    assert rule["alert"] in rule["annotations"]["runbook"]


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_each_alert_has_a_runbook_line_in_the_readme(alert: str) -> None:
    """The README's "Dashboards and alerts" section explains the alert and what to do."""
    lines = [line for line in SECTION.split("\n- ") if line.startswith(f"**{alert}**")]
    assert len(lines) == 1, alert
    assert "Runbook:" in lines[0], lines[0]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_each_dashboard_is_well_formed_and_described(path: Path) -> None:
    """Unique panel ids, every panel with a description and a query on the chosen data source,
    and its title described in the README."""
    doc = json.loads(path.read_text("utf-8"))
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert {"datasource"} <= {v["name"] for v in doc["templating"]["list"]}
    for panel in panels(path):
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        title = panel["title"].replace("$zone", "`zone`")
        assert f"**{title}**" in SECTION, f"README lacks the panel {panel['title']!r}"


def test_operations_panels_are_promql_on_the_selected_streams_and_accounts() -> None:
    """Every operations panel reads cdrsync metrics, filtered by the dashboard's variables."""
    for panel in panels(ROOT / "deploy" / "grafana" / "cdrsync-operations.json"):
        for target in panel["targets"]:
            names = {s.metric for s in selectors(target["expr"])}
            assert names and all(n.startswith("cdrsync_") for n in names), target["expr"]
            assert "$stream" in target["expr"] or "$account" in target["expr"], target["expr"]


def test_analyst_panels_follow_the_time_range_and_the_filters() -> None:
    """Every analyst panel is SQL limited to the dashboard's time range, vendors and accounts."""
    for panel in panels(ROOT / "deploy" / "grafana" / "cdrsync-calls.json"):
        (target,) = panel["targets"]
        sql = target["rawSql"]
        assert "$__timeFilter(" in sql, panel["title"]
        assert "vendor IN ($vendor) AND account IN ($account)" in sql, panel["title"]
