"""``python -m benchmarks reliability``: run the reliability probes and write docs/reliability.md.

Each file in :data:`PROBE_FILES` runs under pytest with ``GATEKEEPER_RELIABILITY_OUT`` naming a
fresh JSON-lines file, into which its tests write their figures (``tests/reliability_log.py``);
then a short soak runs (:mod:`benchmarks.soak`), judged by :mod:`benchmarks.soakverdict`. The
page (:mod:`benchmarks.reliability_report`) shows every fault in
:data:`benchmarks.comparisons.FAULTS` with what was measured beside what nginx, Envoy and Kong do
for the same fault. A probe file that does not exist, or a fault no probe recorded, is shown as
"not run": the layout never depends on what ran, so two generations diff line by line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reliability_report import FileRun, Meta, render
from .soak import SoakOptions, run_soak
from .soakverdict import analyse, git_commit

__all__ = ["ENV", "PROBE_FILES", "ProbeFile", "generate", "read_records", "run_probe_file"]

ROOT = Path(__file__).resolve().parent.parent
ENV = "GATEKEEPER_RELIABILITY_OUT"  # the variable tests/reliability_log.py reads


@dataclass(frozen=True, slots=True)
class ProbeFile:
    path: str
    what: str


# The probe files, in the order they run and are listed. Add one here and it is run and reported.
PROBE_FILES: tuple[ProbeFile, ...] = (
    ProbeFile("tests/test_edge_bypass.py", "blocked-device bypass corpus (`bypass.<class>`)"),
    ProbeFile("tests/test_store_faults.py", "Postgres and Redis stopped, hung, crashed"),
    ProbeFile("tests/test_edge_faults.py", "the edge under Redis faults, drain on SIGTERM"),
    ProbeFile("tests/test_durability.py", "acknowledged admin writes across crashes"),
)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines ``record()`` appended to ``path`` (none if the file is absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pytest_outcome(stdout: str) -> str:
    """``5 passed, 1 xfailed`` from pytest's last line, without its wall time."""
    lines = [ln.strip("= ") for ln in stdout.splitlines() if ln.strip()]
    last = lines[-1] if lines else "no output"
    return re.sub(r"\s+in [\d.]+s.*$", "", last)


def run_probe_file(probe: ProbeFile, work: Path, timeout: float = 900.0) -> FileRun:
    """Run one probe file under pytest and collect its figures; a missing file is "not run"."""
    command = f"{ENV}=<fresh file> python -m pytest -q -p no:cacheprovider {probe.path}"
    if not (ROOT / probe.path).exists():
        return FileRun(probe.path, probe.what, command, "not run (file missing)")
    out = work / (Path(probe.path).stem + ".jsonl")
    out.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", probe.path],
            cwd=ROOT,
            env=dict(os.environ, **{ENV: str(out)}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        verdict = "passed" if done.returncode == 0 else "failed"
        status = f"{verdict} ({_pytest_outcome(done.stdout)})"
    except subprocess.TimeoutExpired:
        status = f"failed (timed out after {timeout:.0f} s)"
    run = FileRun(
        probe.path,
        probe.what,
        command,
        status,
        round(time.monotonic() - started, 1),
        read_records(out),
    )
    for record in run.records:
        record["source"] = probe.path
    return run


def generate(out: Path, soak_seconds: float, progress: Any) -> tuple[Path, list[FileRun]]:
    """Run every probe file and the soak, write ``out``; returns it and the file runs."""
    runs: list[FileRun] = []
    with tempfile.TemporaryDirectory(prefix="gatekeeper-reliability-") as work:
        for probe in PROBE_FILES:
            progress.step("reliability", f"pytest {probe.path}")
            runs.append(run_probe_file(probe, Path(work)))
            progress.say(f"    {runs[-1].status}, {len(runs[-1].records)} figure(s)")
    soak = analyse(run_soak(SoakOptions(seconds=soak_seconds), progress)) if soak_seconds else None
    meta = Meta(
        date=time.strftime("%Y-%m-%d", time.gmtime()),
        commit=git_commit(),
        soak_command=f"python -m benchmarks soak --minutes {soak_seconds / 60:g}",
    )
    out.write_text(render(runs, soak, meta))
    return out, runs
