"""Keeps the soak and the reliability report working, quickly.

The soak runs for a few seconds (``--seconds``, a test-only option) at a small rate: enough to
check that every sample carries RSS, descriptors and TCP sockets for every gatekeeper process and
that a verdict is given. It never asserts the verdict itself: a few seconds are mostly warm-up.
The report generator is checked on a small synthetic figures file written through
``tests/reliability_log.py``, the same path the probe tests use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import reliability_log

from benchmarks.comparisons import FAULTS, STORES
from benchmarks.reliability import PROBE_FILES, ProbeFile, read_records, run_probe_file
from benchmarks.reliability_report import FileRun, Meta, render
from benchmarks.soakverdict import analyse, soak_markdown

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(30)
def test_soak_for_a_few_seconds_samples_every_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "soak",
            "--seconds",
            "4",
            "--interval",
            "0.5",
            "--rate",
            "150",
            "--devices",
            "300",
            "--no-admin",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=28,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads((tmp_path / "soak-latest.json").read_text())
    samples = result["samples"]
    assert len(samples) >= 4
    for sample in samples:
        assert {"supervisor", "worker-1", "worker-2", "recorder-1"} <= set(sample["processes"])
        for name, proc in sample["processes"].items():
            assert proc["rss_kb"] > 0 and proc["fds"] > 0
            # A listener; the recorder listens on a Unix socket, and its TCP connections (to
            # Postgres) open at its first write.
            assert proc["tcp"] >= 1 or name.startswith("recorder"), (name, proc)
    # Under load each worker holds client connections besides its listener.
    assert any(
        s["processes"]["worker-1"]["tcp_states"].get("established", 0) > 0
        for s in samples
        if s["load"]
    )
    assert result["client"]["sent"] > 0 and result["client"]["blocked_forwarded"] == 0
    analysis = result["analysis"]
    assert analysis["verdict"] and analysis["rule"]
    assert analysis["memory_plateaus"] in (True, False, None)
    assert "**Verdict:" in (tmp_path / "soak-latest.md").read_text()


def _sample(t: float, rss_mib: float, load: bool = True) -> dict[str, Any]:
    proc = {
        "pid": 7,
        "rss_kb": int(rss_mib * 1024),
        "anon_kb": 1,
        "fds": 20,
        "tcp": 5,
        "tcp_states": {"established": 4, "listen": 1},
    }
    return {
        "t": t,
        "rps": 100.0,
        "load": load,
        "time_wait": 0,
        "metrics": {"pending": 3.0},
        "client": {"sent": int(t * 100), "t": t},
        "processes": {"worker-1": proc},
    }


def _soak(rss: list[float]) -> dict[str, Any]:
    return {
        "machine": {"cpus": 2},
        "client": {"sent": 1000, "ok": 990, "denied": 10},
        "admin_statuses": {},
        "samples": [_sample(5.0 * i, v) for i, v in enumerate(rss)],
        "options": {
            "seconds": 60.0,
            "rate": 100.0,
            "connections": 8,
            "fresh_connections": 2,
            "devices": 100,
            "new_per_second": 1.0,
            "post_share": 0.1,
            "workers": 1,
            "admin": False,
        },
    }


def test_verdict_tells_a_plateau_from_steady_growth() -> None:
    warm_then_flat = [50, 54, 56, 57, 57.2, 57.3, 57.3, 57.4, 57.4, 57.4]
    assert analyse(_soak(warm_then_flat))["analysis"]["memory_plateaus"] is True
    leaking = [50 + 1.5 * i for i in range(10)]  # 1.5 MiB per 5 s sample
    grows = analyse(_soak(leaking))["analysis"]
    assert grows["memory_plateaus"] is False and "memory grows" in grows["verdict"]
    assert analyse(_soak([50, 51, 52]))["analysis"]["memory_plateaus"] is None  # too short


def test_report_renders_every_probe_and_marks_missing_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = tmp_path / "figures.jsonl"
    monkeypatch.setenv(reliability_log.ENV, str(figures))
    reliability_log.record(
        "postgres.stopped",
        requests=500,
        failed=0,
        leaked_blocked=0,
        acked_writes=40,
        lost_writes=0,
        detect_seconds=0.4,
        recover_seconds=1.25,
    )
    reliability_log.record("bypass.header-case", cases=120, leaked=0, reached_upstream=0)
    reliability_log.record(
        "bypass.absolute-form", cases=30, leaked=0, reached_upstream=4, twins_forwarded=4
    )
    reliability_log.record("durability.admin-block", acked=25, survived=25)
    records = read_records(figures)
    for record in records:
        record["source"] = "tests/test_store_faults.py"
    runs = [
        FileRun(
            "tests/test_store_faults.py",
            "faults",
            "pytest tests/test_store_faults.py",
            "passed (4 passed)",
            12.5,
            records,
        ),
        FileRun(
            "tests/test_durability.py",
            "durability",
            "pytest tests/test_durability.py",
            "not run (file missing)",
        ),
    ]
    meta = Meta(date="2024-01-02", commit="abc123", soak_command="python -m benchmarks soak")
    page = render(runs, analyse(_soak([50, 51, 51.2, 51.3, 51.3, 51.3, 51.4])), meta)

    assert page == render(runs, analyse(_soak([50, 51, 51.2, 51.3, 51.3, 51.3, 51.4])), meta)
    for probe in FAULTS:
        assert f"| `{probe}` |" in page
    for store in STORES:
        assert f"#### {store.title}" in page
        assert store.nginx in page and store.envoy in page and store.kong in page
    assert "| gatekeeper, hung: measured | not run |" in page
    row = next(ln for ln in page.splitlines() if ln.startswith("| `postgres.stopped` |"))
    assert "| 500 | 0 | 0 | 40 | 0 | 0.4 | 1.25 |" in row
    assert "| `redis.hung` | | | | | | | | not run |" in page
    assert "| `header-case` | 120 | 0 | 0 |" in page and "twins_forwarded=4" in page
    assert "**total (2 classes)** | 150 | 0 | 4 |" in page
    assert "acked=25, survived=25" in page
    assert "| `tests/test_durability.py` | durability |" in page
    assert "not run (file missing)" in page
    assert "memory plateaus" in page and "abc123" in page and "2024-01-02" in page
    headings = [ln for ln in page.splitlines() if ln.startswith("## ")]
    assert headings == [
        "## Store faults",
        "## Blocked-device bypass corpus",
        "## Other probes",
        "## Soak",
        "## Probes",
    ]

    empty = render([], None, meta)  # nothing ran: every section is still there
    assert [ln for ln in empty.splitlines() if ln.startswith("## ")] == headings
    assert "Not run." in empty and "| not run |" in empty


def test_missing_probe_file_is_not_run(tmp_path: Path) -> None:
    run = run_probe_file(ProbeFile("tests/test_no_such_probe.py", "nothing"), tmp_path)
    assert run.status == "not run (file missing)" and run.records == []
    assert len({p.path for p in PROBE_FILES}) == len(PROBE_FILES)
    assert "Rule:" in soak_markdown(analyse(_soak([50.0] * 8)))
