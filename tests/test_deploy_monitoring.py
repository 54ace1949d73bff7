"""What operators take away in deploy/: the Prometheus alert rules are valid and fire on the
synthetic series of their unit tests, the Grafana dashboard is a valid dashboard model whose
queries parse, and both speak only of the metrics ``/metrics`` serves, with their types and
labels."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
TOKEN = "metrics-token-deploy-51c2"

# The metrics contract (docs/monitoring.md, "Metrics"): family name -> (type, labels).
CONTRACT = {
    "joepro_sandboxes": ("gauge", {"provider", "state"}),
    "joepro_sandbox_oldest_transition_seconds": ("gauge", {"state"}),
    "joepro_launch_duration_seconds": ("histogram", {"kind"}),
    "joepro_launch_failures": ("counter", {"code"}),
    "joepro_provider_call_duration_seconds": ("histogram", {"provider", "operation", "outcome"}),
    "joepro_idle_stops": ("counter", {"reason", "outcome"}),
    "joepro_terminal_sessions_open": ("gauge", set()),
    "joepro_active_users": ("gauge", set()),
    "joepro_cost_month_to_date": ("gauge", {"currency"}),
    "joepro_budget_exceeded_users": ("gauge", {"limit"}),
}
SERIES_SUFFIXES = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
# Labels every scraped series may carry besides its own: the scrape's, and a histogram's buckets.
TARGET_LABELS = {"instance", "job", "le"}

METRIC = re.compile(r"\bjoepro_[a-z0-9_]+")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
SELECTOR = re.compile(r"\{([^{}]*)\}")


def promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_targets() -> list[dict]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target for panel in panels for target in panel.get("targets", [])]


def dashboard_expressions() -> dict[str, str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {
        f"{panel['title']} {target['refId']}": target["expr"] for panel in panels for target in panel.get("targets", [])
    }


def all_expressions() -> dict[str, str]:
    return {**rule_expressions(), **dashboard_expressions()}


def family_of(series: str) -> tuple[str, str]:
    """The contract family a series name belongs to, and its type; fails for any other name."""
    for family, (kind, _) in CONTRACT.items():
        for suffix in SERIES_SUFFIXES[kind]:
            if series == family + suffix:
                return family, kind
    raise AssertionError(f"{series} is not a series of the metrics contract")


def referenced_series() -> set[str]:
    return {name for expr in all_expressions().values() for name in METRIC.findall(expr)}


# --- the alert rules --------------------------------------------------------------------------


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_fire_on_their_synthetic_series():
    """Stuck transitions, budget breaches, provider errors, slow launches, failing idle stops
    and absent metrics: each alert fires when it should and stays quiet when it should not."""
    result = promtool("test", "rules", RULE_TESTS.name)

    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(rule_expressions())


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    headings = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in (ROOT / "docs" / "monitoring.md").read_text().splitlines()
        if line.startswith("#")
    }

    for rule in (rule for group in groups for rule in group["rules"]):
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert "for" in rule, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/monitoring.md" and anchor in headings, rule["alert"]


# --- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_model_on_a_chosen_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())

    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
    titles = " / ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for subject in (
        "sandboxes by state",
        "launch duration p50 / p95 by kind",
        "provider calls by operation",
        "provider error ratio",
        "provider latency p95",
        "stops by reason and outcome",
        "open terminals",
        "active users",
        "month-to-date cost",
        "over budget",
    ):
        assert subject in titles


def test_the_dashboard_queries_are_valid_promql(tmp_path):
    """Each query becomes a recording rule, which promtool parses (Grafana's own
    ``$__rate_interval`` replaced by a plain range)."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": expr.replace("$__rate_interval", "5m")}
                    for n, expr in enumerate(dashboard_expressions().values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))

    result = promtool("check", "rules", str(path), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


# --- the names they use -----------------------------------------------------------------------


def test_rules_and_dashboard_use_only_the_contract_names_with_their_suffixes():
    used = referenced_series()

    families = {family_of(series)[0] for series in used}
    assert families == set(CONTRACT)  # and every metric is watched somewhere


def test_rules_and_dashboard_use_only_labels_their_metrics_have():
    for where, expr in all_expressions().items():
        allowed = set(TARGET_LABELS)
        for series in METRIC.findall(expr):
            allowed |= CONTRACT[family_of(series)[0]][1]
        used = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        used |= {label for selector in SELECTOR.findall(expr) for label in MATCHER.findall(selector)}
        assert used <= allowed, f"{where}: {used - allowed}"
    for target in dashboard_targets():
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))
        allowed = {label for series in METRIC.findall(target["expr"]) for label in CONTRACT[family_of(series)[0]][1]}
        assert legend <= allowed, target["expr"]


@pytest.mark.django_db
def test_every_name_they_use_is_in_a_real_scrape(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with override_settings(METRICS_TOKEN=TOKEN, METRICS_ALLOWED_NETWORKS=[]):
        response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200, response.content[:200]
    served = {family.name: family.type for family in text_string_to_metric_families(response.content.decode())}
    for series in sorted(referenced_series()):
        family, kind = family_of(series)
        assert served.get(family) == kind, f"{series}: /metrics serves {family} as {served.get(family)}"
