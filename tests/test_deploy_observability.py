"""Static checks of the observability that ships with the gatekeeper: the metric names used by
alerts and dashboard against what a running proxy and admin API expose (the
``proxy_metrics_text`` and ``admin_metrics_text`` fixtures of tests/conftest.py), promtool on the
rules and their unit tests, runbook links, and the Grafana dashboard and provisioning.
Tools come from ``config/checks-requirements.txt`` and Debian's ``prometheus`` (promtool); a test
whose tool is missing is skipped and says which package provides it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from deployrig import (
    ALERT_TESTS,
    ALERTS,
    COMPOSE,
    DASHBOARD,
    GRAFANA_PROVISIONING,
    OPERATIONS,
    PROMETHEUS,
    ROOT,
    assert_ok,
    load_yaml,
    promtool,
    run,
)

from gatekeeper.runtime.alert_rules import render as render_alert_rules

# --- metric names: what PromQL asks for versus what /metrics exposes ---------------------------

# A metric name in PromQL: a gatekeeper_* or process_* identifier not preceded by another
# identifier character (so `$proxy_job` or `x_gatekeeper_y` never match).
_METRIC_NAME = re.compile(r"(?<![\w:$])((?:gatekeeper|process)_[A-Za-z0-9_:]*)")
# String literals (label values, regexes) are not metric names: blank them out first.
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')

# Sample names each metric type exposes, by suffix. A counter family is named without
# `_total` in OpenMetrics and with it in the Prometheus text format: both are handled.
_SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def metric_names_in(expr: str) -> set[str]:
    """The gatekeeper_* and process_* series names a PromQL expression selects."""
    return set(_METRIC_NAME.findall(_STRING_LITERAL.sub('""', expr)))


def exposed_sample_names(exposition: str) -> set[str]:
    """Every series name a Prometheus or OpenMetrics text exposition offers to queries.

    A family declared by ``# TYPE`` counts with all the samples its type implies (a labelled
    histogram with no observation yet exposes no ``_bucket`` line, but can be queried as soon
    as it has one); sample lines count as they stand.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            kind = kind.strip()
            if kind == "counter":
                family = family.removesuffix("_total")
            elif kind == "info":
                family = family.removesuffix("_info")
            names.update(family + suffix for suffix in _SAMPLE_SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def _alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as fh:
        loaded: dict[str, Any] = json.load(fh)
    return loaded


def _dashboard_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _dashboard_panels(panel.get("panels", []))


def _dashboard_exprs() -> list[str]:
    """PromQL of every panel target (template-variable queries are not PromQL)."""
    return [
        target["expr"]
        for panel in _dashboard_panels(_dashboard()["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _dashboard_variable_queries() -> list[str]:
    queries: list[str] = []
    for variable in _dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            queries.append(query)
    return queries


def _as_promql(grafana_expr: str) -> str:
    """Replace Grafana's variables so promtool can parse a dashboard expression."""
    return (
        grafana_expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$proxy_job", "gatekeeper-proxy")
        .replace("$admin_job", "gatekeeper-admin")
    )


class TestMetricNameParsing:
    """The helpers above, checked against prometheus_client's own output."""

    def test_names_in_promql(self) -> None:
        expr = (
            "histogram_quantile(0.99, sum by (le) (rate(gatekeeper_request_duration_seconds_bucket"
            '{job=~"$proxy_job", outcome="gatekeeper_not_a_metric"}[5m])))'
            " / on() group_left sum(process_cpu_seconds_total) and up{job='x'}"
            " + label_values(gatekeeper_ready, job)"
        )
        assert metric_names_in(expr) == {
            "gatekeeper_request_duration_seconds_bucket",
            "process_cpu_seconds_total",
            "gatekeeper_ready",
        }

    def test_exposed_names_follow_metric_types(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.exposition import generate_latest

        registry = CollectorRegistry()
        Counter("demo_requests", "h", ["outcome"], registry=registry)
        Counter("demo_flushed_total", "h", registry=registry).inc()
        Histogram("demo_duration_seconds", "h", registry=registry)
        Histogram("demo_labelled_seconds", "h", ["route"], registry=registry)
        Gauge("demo_pending", "h", registry=registry)
        names = exposed_sample_names(generate_latest(registry).decode())

        assert {
            "demo_requests_total",
            "demo_flushed_total",
            "demo_duration_seconds_bucket",
            "demo_duration_seconds_sum",
            "demo_duration_seconds_count",
            "demo_labelled_seconds_bucket",
            "demo_pending",
        } <= names
        assert "demo_requests" not in names
        assert "demo_duration_seconds" not in names
        assert "demo_flushed_total_total" not in names


def test_alerts_and_dashboard_use_only_exported_metrics(
    proxy_metrics_text: str, admin_metrics_text: str
) -> None:
    exported = exposed_sample_names(proxy_metrics_text) | exposed_sample_names(admin_metrics_text)
    assert any(name.startswith("gatekeeper_") for name in exported), "no gatekeeper metrics?"

    used: dict[str, set[str]] = {}
    for rule in _alert_rules():
        for name in metric_names_in(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for expr in _dashboard_exprs() + _dashboard_variable_queries():
        for name in metric_names_in(expr):
            used.setdefault(name, set()).add("dashboard")
    assert len(used) >= 10, f"the name parser found suspiciously few metrics: {sorted(used)}"

    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not missing, f"used but not exported by the proxy or admin API: {missing}"


def test_the_admin_api_reports_its_process(admin_metrics_text: str) -> None:
    names = exposed_sample_names(admin_metrics_text)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names


def test_no_created_series(proxy_metrics_text: str, admin_metrics_text: str) -> None:
    """A ``*_created`` timestamp per counter and histogram is a series nothing reads."""
    for text in (proxy_metrics_text, admin_metrics_text):
        samples = [
            line.split("{")[0].split()[0] for line in text.splitlines() if line[:1].isalpha()
        ]
        assert any(name.startswith("gatekeeper_") for name in samples)
        assert [name for name in samples if name.endswith("_created")] == []


# --- Prometheus ----------------------------------------------------------------------------------


def test_promtool_checks_alert_rules() -> None:
    assert_ok(run(promtool(), "check", "rules", str(ALERTS)))


def test_promtool_unit_tests_of_alerts() -> None:
    assert_ok(run(promtool(), "test", "rules", str(ALERT_TESTS)))


def test_promtool_checks_compose_prometheus_config() -> None:
    assert_ok(run(promtool(), "check", "config", str(PROMETHEUS)))


def test_every_alert_is_unit_tested() -> None:
    tested = {
        case["alertname"]
        for test in load_yaml(ALERT_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in _alert_rules()} <= tested


def _markdown_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown document."""
    anchors: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or not re.match(r"#{1,6} ", line):
            continue
        title = line.lstrip("#").strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


# The base the checked-in config/prometheus/alerts.yml is rendered for (docs/operations.md says
# how to render it for yours).
EXAMPLE_RUNBOOK_BASE = "https://runbooks.example.com/gatekeeper/operations"


def test_alerts_have_severity_summary_and_an_absolute_runbook_link() -> None:
    anchors = _markdown_anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in _alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == EXAMPLE_RUNBOOK_BASE, url  # absolute: a pager can follow it
        assert anchor == name.lower(), f"{name}: runbook anchor should be {name.lower()!r}"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading for #{anchor}"


def test_the_checked_in_rules_are_the_packaged_rules_rendered() -> None:
    assert ALERTS.read_text(encoding="utf-8") == render_alert_rules(EXAMPLE_RUNBOOK_BASE)


def test_prometheus_scrapes_the_compose_services() -> None:
    config = load_yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    proxy_targets = jobs["gatekeeper-proxy"]["static_configs"][0]["targets"]
    admin_targets = jobs["gatekeeper-admin"]["static_configs"][0]["targets"]
    assert proxy_targets == ["proxy:9180"]
    assert admin_targets == ["admin:8081"]
    assert jobs["gatekeeper-admin"].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == [ALERTS.name]
    services = load_yaml(COMPOSE)["services"]
    assert {"proxy", "admin"} <= set(services)


# --- Grafana -------------------------------------------------------------------------------------


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    promtool_bin = promtool()
    exprs = _dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": _as_promql(expr)}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    assert_ok(run(promtool_bin, "check", "rules", str(path)))


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "gatekeeper"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "proxy_job", "admin_job"} <= variables

    panels = list(_dashboard_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {panel["title"] for panel in panels}
    for wanted in (
        "Requests by outcome",
        "Request latency",
        "Upstream latency",
        "Denied requests",
        "Blocked devices in mirror",
        "Time since last sync",
        "Activity buffer",
        "Flush rate",
        "Admin requests by status",
    ):
        assert wanted in titles
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_grafana_provisioning_matches_compose() -> None:
    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "gatekeeper.yml")["providers"]
    datasources = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    assert datasources["datasources"][0]["type"] == "prometheus"
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounted = {
        target.split(":")[0]: source
        for source, target in (volume.split(":", 1) for volume in grafana["volumes"])
    }
    dashboard_dir = providers[0]["options"]["path"]
    assert mounted[f"{dashboard_dir}/{DASHBOARD.name}"] == f"./{DASHBOARD.relative_to(ROOT)}"
