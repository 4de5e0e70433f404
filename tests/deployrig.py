"""Shared paths and helpers of the deployment checks (test_deploy_*.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

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


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def executable(name: str, provided_by: str) -> str:
    """Path of a check tool: beside this interpreter (pip-installed into the venv), else PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes from {provided_by})")
    return found


def python_tool(module: str) -> list[str]:
    """argv prefix that runs a pip-installed check tool with this interpreter."""
    pytest.importorskip(module, reason=f"{module} is not installed ({CHECKS_HINT})")
    return [sys.executable, "-m", module]


def promtool() -> str:
    return executable("promtool", "the Debian package `prometheus`")


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)
