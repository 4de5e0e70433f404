"""The soak's judgement and its pages: does memory plateau, and the tables that show why.

:func:`analyse` judges the samples of :func:`benchmarks.soak.run_soak` by the rule :data:`RULE`;
:func:`soak_markdown` renders the result, and :func:`write_soak_outputs` writes
``soak-latest.json``/``.md``. ``python -m benchmarks soak`` and the reliability report
(:mod:`benchmarks.reliability_report`) both judge and render a soak through this module.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cells import cell
from .soakclient import BLOCKED_EVERY

__all__ = ["RULE", "analyse", "git_commit", "soak_markdown", "verdict_line", "write_soak_outputs"]

ROOT = Path(__file__).resolve().parent.parent
_STEP_MIB = 1.0
_SLOPE_MIB_PER_MIN = 0.5
_FD_MARGIN = 8
_MIN_SAMPLES = 6
RULE = (
    "Samples taken under load are split at the middle of the run. A process's memory plateaus "
    f"when its RSS grew by at most {_STEP_MIB:g} MiB over the second half, or when it grew less "
    "over the second half than over the first and the least-squares slope of its RSS over the "
    f"second half is at most {_SLOPE_MIB_PER_MIN:g} MiB/min. Memory plateaus when every "
    "gatekeeper process that lived through the whole run plateaus (one that exited or appeared "
    "mid-run is named). Descriptors and connections are steady when no process's highest count "
    f"of open descriptors or TCP sockets in the second half exceeds its highest in the first "
    f"half by more than {_FD_MARGIN}. A verdict needs at least {_MIN_SAMPLES} samples under load; "
    "a short run cannot tell growth smaller than the allowances from noise."
)


def git_commit() -> str:
    """The short commit, with ``+dirty`` when tracked files differ from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else 0.0


def _process_stats(series: Sequence[tuple[float, Mapping[str, Any]]]) -> dict[str, Any]:
    mid = (series[0][0] + series[-1][0]) / 2
    first = [(t, p) for t, p in series if t <= mid]
    second = [(t, p) for t, p in series if t >= mid]

    def mib(point: tuple[float, Mapping[str, Any]]) -> float:
        return float(point[1]["rss_kb"]) / 1024

    growth1, growth2 = mib(first[-1]) - mib(first[0]), mib(second[-1]) - mib(second[0])
    slope2 = _slope([(t / 60, mib((t, p))) for t, p in second])
    peaks = {
        key: (max(p[key] for _, p in first), max(p[key] for _, p in second))
        for key in ("fds", "tcp")
    }
    return {
        "pid": series[0][1]["pid"],
        "rss_start_mib": round(mib(series[0]), 1),
        "rss_mid_mib": round(mib(first[-1]), 1),
        "rss_end_mib": round(mib(series[-1]), 1),
        "growth_first_mib": round(growth1, 2),
        "growth_second_mib": round(growth2, 2),
        "slope_second_mib_per_min": round(slope2, 3),
        "fds_max": list(peaks["fds"]),
        "tcp_max": list(peaks["tcp"]),
        "peers": {
            peer: [
                series[0][1].get("tcp_peers", {}).get(peer, 0),
                series[-1][1].get("tcp_peers", {}).get(peer, 0),
            ]
            for peer in sorted(
                {*series[0][1].get("tcp_peers", {}), *series[-1][1].get("tcp_peers", {})}
            )
        },
        "plateaus": growth2 <= _STEP_MIB or (growth2 < growth1 and slope2 <= _SLOPE_MIB_PER_MIN),
        "steady": all(late <= early + _FD_MARGIN for early, late in peaks.values()),
    }


def analyse(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` of :func:`benchmarks.soak.run_soak` with its ``analysis`` and ``commit``."""
    load = [s for s in result["samples"] if s.get("load", True)]
    names = sorted({name for s in result["samples"] for name in s["processes"]})
    processes: dict[str, dict[str, Any]] = {}
    partial: list[str] = []
    for name in names:
        series = [(float(s["t"]), s["processes"][name]) for s in load if name in s["processes"]]
        if len(series) < max(2, len(load)):
            partial.append(name)
        else:
            processes[name] = _process_stats(series)
    rps = [float(s["rps"]) for s in load[1:]] or [0.0]
    mean_rps = sum(rps) / len(rps)
    memory = steady = None
    if len(load) < _MIN_SAMPLES or not processes:
        verdict = f"undetermined: {len(load)} samples under load (a verdict needs {_MIN_SAMPLES})"
    else:
        memory = all(p["plateaus"] for p in processes.values())
        steady = all(p["steady"] for p in processes.values())
        worst = max(processes.items(), key=lambda kv: kv[1]["slope_second_mib_per_min"])
        per_request = (
            max(0.0, worst[1]["slope_second_mib_per_min"]) * 2**20 / (mean_rps * 60 or 1.0)
        )
        verdict = (
            f"memory {'plateaus' if memory else 'grows'}; descriptors and connections "
            f"{'steady' if steady else 'grow'}; steepest second-half RSS slope "
            f"{worst[1]['slope_second_mib_per_min']:+.3f} MiB/min ({worst[0]}), "
            f"≤ {per_request:.1f} bytes per request at {mean_rps:.0f} req/s"
        )
    if partial:
        verdict += f"; not there for the whole run: {', '.join(partial)}"
    analysis = {
        "rule": RULE,
        "verdict": verdict,
        "memory_plateaus": memory,
        "descriptors_steady": steady,
        "mean_rps": round(mean_rps, 1),
        "partial": partial,
        "processes": processes,
    }
    return {**result, "commit": git_commit(), "analysis": analysis}


def _problems(client: Mapping[str, Any]) -> int:
    """Answers that were neither a success nor a block's 403, plus socket errors."""
    return int(client.get("errors", 0)) + sum(
        int(v) for k, v in client.items() if k.startswith("status_")
    )


def verdict_line(result: Mapping[str, Any]) -> str:
    client = result["client"]
    return (
        f"{result['analysis']['verdict']}; {_problems(client)} failed of "
        f"{client.get('sent', 0)} requests, {client.get('blocked_forwarded', 0)} blocked "
        "forwarded"
    )


def _thin(count: int, keep: int) -> list[int]:
    """Up to ``keep`` evenly spread indices of ``count`` rows, first and last included."""
    if count <= keep:
        return list(range(count))
    return sorted({round(i * (count - 1) / (keep - 1)) for i in range(keep)})


def _length(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 60 else f"{seconds / 60:g} min"


def soak_markdown(result: Mapping[str, Any]) -> str:
    """The soak as Markdown: settings, verdict and rule, a table over time, one per process."""
    o, client, a = result["options"], result["client"], result["analysis"]
    names = sorted({n for s in result["samples"] for n in s["processes"]})
    lines = [
        f"{_length(o['seconds'])} at {o['rate']:g} req/s ({o['connections']} connections, "
        f"{o['fresh_connections']} of them one request per connection), {o['devices']:,} devices "
        f"plus {o['new_per_second']:g} new per second, 1 in {BLOCKED_EVERY} blocked, "
        f"{o['post_share']:.0%} POST with a body; `gatekeeper proxy --workers {o['workers']}`"
        f"{' and the admin API (a block or unblock and a list per sample)' if o['admin'] else ''}"
        f"; {result['machine']['cpus']} CPUs, commit `{result.get('commit', '?')}`.",
        "",
        f"Client: {client.get('sent', 0):,} sent, {client.get('ok', 0):,} 2xx, "
        f"{client.get('denied', 0):,} 403, {_problems(client)} failed, "
        f"{client.get('blocked_forwarded', 0)} of {client.get('blocked_sent', 0)} requests from "
        f"blocked devices forwarded, {client.get('connects', 0):,} connections opened "
        f"({client.get('server_closed', 0)} keep-alive ones closed by the proxy), "
        f"{client.get('new_devices', 0):,} new devices; admin API answers: "
        f"{', '.join(f'{k}: {v}' for k, v in result['admin_statuses'].items()) or 'none'}.",
        "",
        f"**Verdict: {a['verdict']}.**",
        "",
        f"Rule: {a['rule']}",
        "",
        "| t (s) | req/s | failed | pending | "
        + " | ".join(f"{n} RSS MiB" for n in names)
        + " | fds | TCP | TIME_WAIT (host) |",
        "|" + "---:|" * (7 + len(names)),
    ]
    samples = result["samples"]
    for i in _thin(len(samples), 20):
        s = samples[i]
        rss = " | ".join(
            cell(round(s["processes"][n]["rss_kb"] / 1024, 1)) if n in s["processes"] else "—"
            for n in names
        )
        procs = s["processes"].values()
        t = f"{s['t']:.0f}" + ("" if s.get("load", True) else " (after)")
        lines.append(
            f"| {t} | {s['rps']:.0f} | {_problems(s['client'])} | "
            f"{cell(s['metrics'].get('pending'))} | {rss} | "
            f"{sum(p['fds'] for p in procs)} | {sum(p['tcp'] for p in procs)} | "
            f"{s['time_wait']} |"
        )
    lines += [
        "",
        "| process | RSS start → mid → end (MiB) | growth 1st / 2nd half (MiB) | "
        "2nd-half slope (MiB/min) | max fds 1st / 2nd | max TCP 1st / 2nd | "
        "established by peer, first → last | plateaus |",
        "|---|---|---|---:|---|---|---|---|",
    ]
    for name, p in a["processes"].items():
        peers = ", ".join(f"{k} {v[0]}→{v[1]}" for k, v in p.get("peers", {}).items())
        lines.append(
            f"| {name} | {p['rss_start_mib']} → {p['rss_mid_mib']} → {p['rss_end_mib']} | "
            f"{p['growth_first_mib']:+.2f} / {p['growth_second_mib']:+.2f} | "
            f"{p['slope_second_mib_per_min']:+.3f} | {p['fds_max'][0]} / {p['fds_max'][1]} | "
            f"{p['tcp_max'][0]} / {p['tcp_max'][1]} | {peers or '—'} | "
            f"{'yes' if p['plateaus'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def write_soak_outputs(result: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """``soak-latest.json`` and ``soak-latest.md`` in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "soak-latest.json", out_dir / "soak-latest.md"]
    # One sample per line: an hour's soak stays a few hundred kB and diffs line by line.
    head = json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1)
    samples = ",\n  ".join(json.dumps(s, separators=(",", ":")) for s in result["samples"])
    paths[0].write_text(f'{head[:-2]},\n "samples": [\n  {samples}\n ]\n}}\n')
    paths[1].write_text(soak_markdown(result))
    return paths
