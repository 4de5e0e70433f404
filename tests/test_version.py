"""What build is running: ``gatekeeper --version``, the start-up log and a metric say it."""

from __future__ import annotations

import subprocess
import sys

from gatekeeper import __version__
from gatekeeper.build_info import compiled_modules, describe


def test_version_names_the_release_and_the_build() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == f"gatekeeper {__version__} ({describe()})"
    assert describe() == "pure Python" or describe().startswith("compiled (mypyc): ")


def test_the_proxy_exports_its_build(proxy_metrics_text: str) -> None:
    build = "mypyc" if compiled_modules() else "python"
    line = f'gatekeeper_build_info{{build="{build}",version="{__version__}"}} 1.0'
    assert line in proxy_metrics_text.splitlines()
