"""A scenario's result as the report keeps it: unmeasured (skipped or failed) results, medians
of runs, the CPU line printed after a run, and the commit measured."""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Iterable
from typing import Any

from .loadgen import Summary

__all__ = ["CPU_KEYS", "commit", "cpu_line", "failed", "median", "skipped"]

CPU_KEYS = (
    "cpu_us_per_request",
    "cycles_per_request",
    "instructions_per_request",
    # Of cpu_us_per_request, the gatekeeper recorder process's part (None for other servers).
    "recorder_cpu_us_per_request",
)


def skipped(name: str, reason: str) -> dict[str, Any]:
    """The result of a scenario that did not run."""
    return _unmeasured(name, "skipped", reason)


def failed(name: str, exc: BaseException) -> dict[str, Any]:
    """The result of a scenario that broke."""
    return _unmeasured(name, "failed", f"failed: {type(exc).__name__}: {exc}".strip())


def _unmeasured(name: str, status: str, reason: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "reason": reason,
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        **dict.fromkeys(CPU_KEYS),
    }


def median(values: Iterable[float | None]) -> float | None:
    """The median of the measured values, or None when none was measured."""
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def cpu_line(run: Summary) -> str:
    if run.get("cpu_us_per_request") is None:
        return "cpu —"
    line = f"cpu {run['cpu_us_per_request']:.1f} us/req"
    if run.get("recorder_cpu_us_per_request") is not None:
        line += f" (recorder {run['recorder_cpu_us_per_request']:.1f})"
    if run.get("instructions_per_request") is not None:
        line += (
            f"  {run['cycles_per_request']:,.0f} cycles"
            f"  {run['instructions_per_request']:,.0f} instr/req"
        )
    return line


def commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"
