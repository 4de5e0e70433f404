"""Keeps the benchmark harness working: ``python -m benchmarks proxy --quick`` at a tiny load.

These tests assert the shape of ``latest.json`` and that every scenario either ran or was
reported skipped with a reason. They never assert a speed: the figures depend on the machine.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from benchmarks.chart import bar_chart_png
from benchmarks.loadclient import percentile

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["direct", "nginx", "naive", "gatekeeper-1", "gatekeeper-2"]
CPU_KEYS = (
    "cpu_us_per_request",
    "cycles_per_request",
    "instructions_per_request",
    "recorder_cpu_us_per_request",
)
TINY = [
    "--quick",
    "--duration",
    "1",
    "--runs",
    "1",
    "--warmup",
    "0",
    "--trials",
    "3",
    "--writebehind-seconds",
    "0.5",
    "--connections",
    "4",
    "--devices",
    "200",
    "--no-pin",
    "--quiet",
]


def _run(out: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "proxy", *TINY, "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "latest.json").read_text())
    return report


def _number_or_none(value: object) -> bool:
    return value is None or isinstance(value, int | float)


def _assert_shape(report: dict[str, Any]) -> None:
    machine = report["machine"]
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1
    assert isinstance(machine["python"], str) and isinstance(machine["commit"], str)
    for row in report["scenarios"]:
        assert set(row) >= {"name", "rps", "p50_ms", "p99_ms", "status", *CPU_KEYS}
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "ok":
            assert row["rps"] > 0 and row["p50_ms"] >= 0 and row["p99_ms"] >= row["p50_ms"]
            # CPU from /proc always; cycles and instructions only where perf works.
            assert isinstance(row["cpu_us_per_request"], float), row
            assert 0 < row["cpu_us_per_request"] < 100_000, row
            for key in ("cycles_per_request", "instructions_per_request"):
                assert row[key] is None or row[key] > 0, row
            # Only a gatekeeper has a recorder process (its share may round to nothing).
            recorder = row["recorder_cpu_us_per_request"]
            assert recorder is None or row["name"].startswith("gatekeeper-"), row
            assert recorder is None or 0 < recorder <= row["cpu_us_per_request"], row
        else:
            assert row["reason"], row
            assert row["rps"] is None and row["p50_ms"] is None and row["p99_ms"] is None
            assert all(row[key] is None for key in CPU_KEYS), row
    expected = {
        "ratios": {"gatekeeper_vs_nginx", "gatekeeper_vs_naive", "gatekeeper_vs_nginx_cpu"},
        "propagation_ms": {"block_p50", "block_p99", "unblock_p99"},
        "writebehind": {"devices_per_s", "rows_per_1000_requests"},
        "half_load": {"added_p50_ms", "added_p99_ms"},
    }
    for section, keys in expected.items():
        assert set(report[section]) == keys, section
        assert all(_number_or_none(v) for v in report[section].values()), section
    for item in report["skipped"]:
        assert item["name"] and item["reason"], item


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0


@pytest.mark.slow
def test_quick_with_fallbacks(tmp_path: Path) -> None:
    """Without nginx and wrk (forced here), every built-in fallback runs."""
    report = _run(tmp_path, "--no-nginx", "--no-wrk")
    _assert_shape(report)
    rows = {row["name"]: row for row in report["scenarios"]}
    assert list(rows) == SCENARIOS
    assert rows["direct"]["status"] == "ok" and rows["naive"]["status"] == "ok"
    assert rows["nginx"]["status"] == "skipped" and "nginx" in rows["nginx"]["reason"]
    if rows["gatekeeper-1"]["status"] == "skipped":
        for name in ("gatekeeper-2", "half-load", "propagation", "writebehind"):
            assert name in {item["name"] for item in report["skipped"]}
        assert report["ratios"]["gatekeeper_vs_naive"] is None
    else:
        assert report["ratios"]["gatekeeper_vs_naive"] is not None
    # nginx is skipped here (--no-nginx), so there is no CPU ratio to it.
    assert report["ratios"]["gatekeeper_vs_nginx_cpu"] is None
    assert "|" in (tmp_path / "latest.md").read_text()
    _assert_png(tmp_path / "latest.png")


@pytest.mark.slow
def test_quick_with_installed_tools(tmp_path: Path) -> None:
    """With whatever is installed (nginx and wrk if present); only the non-gatekeeper part."""
    report = _run(tmp_path, "--only", "direct,nginx,naive")
    _assert_shape(report)
    rows = {row["name"]: row for row in report["scenarios"]}
    assert list(rows) == ["direct", "nginx", "naive"]
    assert rows["direct"]["status"] == "ok" and rows["naive"]["status"] == "ok"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) == 0.0


@pytest.mark.parametrize("value", [None, 10.0])
def test_chart_is_a_valid_png(value: float | None) -> None:
    png = bar_chart_png("t", [("direct", value, "caption", (1, 2, 3))])
    width, height = struct.unpack(">II", png[16:24])
    start = png.index(b"IDAT") + 4
    length = struct.unpack(">I", png[start - 8 : start - 4])[0]
    raw = zlib.decompress(png[start : start + length])
    assert len(raw) == height * (1 + 3 * width)


def test_flushevents_compares_both_variants_in_one_run(tmp_path: Path) -> None:
    """``python -m benchmarks flushevents`` at a tiny flood: both variants measured, alternating,
    the outbox checked (it exits non-zero when a round leaves the wrong number of events)."""
    out = tmp_path / "flushevents.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "flushevents",
            "--devices",
            "600",
            "--batch",
            "300",
            "--rounds",
            "2",
            "--quiet",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["rounds"]) == {"with events", "without"}
    assert all(len(times) == 2 and min(times) > 0 for times in result["rounds"].values())
    assert result["ratio"] == result["median_s"]["with events"] / result["median_s"]["without"]
    assert "with/without, flush time:" in done.stdout
    assert set(result["postgres_cpu_s"]) == {"with events", "without"}
