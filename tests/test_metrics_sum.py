"""The node's summed /metrics and readiness read every process's file, even while one starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gatekeeper.edge.metrics import summed_registry

_WRITE_A_GAUGE = """
from prometheus_client import Gauge
Gauge("demo_ready", "h", multiprocess_mode="livemin").set(1)
"""


def test_a_file_still_being_created_is_skipped(tmp_path: Path) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", _WRITE_A_GAUGE], env=env, check=True, timeout=30)
    # What a starting process has for a moment: its file, created and not yet sized.
    (tmp_path / "gauge_livemin_999999.db").touch()
    samples = [s.value for m in summed_registry(str(tmp_path)).collect() for s in m.samples]
    assert samples == [1.0]
