"""The results: ``latest.json`` (the shape issue 4 fixes), ``latest.md`` and ``latest.png``.

The JSON always has every key of the fixed shape; a figure whose measurement was skipped or
failed is ``null``, and ``skipped`` lists what did not run and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chart import Bar, write_png

if TYPE_CHECKING:
    from .suite import Options

__all__ = ["DOCS_BEGIN", "DOCS_END", "build_report", "markdown", "update_docs", "write_outputs"]

DOCS_BEGIN = "<!-- benchmark results: begin (written by python -m benchmarks proxy) -->"
DOCS_END = "<!-- benchmark results: end -->"
_ORDER = ("direct", "nginx", "naive", "gatekeeper-1", "gatekeeper-2")
_COLORS = {
    "direct": (120, 170, 120),
    "nginx": (130, 130, 130),
    "naive": (230, 150, 60),
    "gatekeeper-1": (60, 110, 200),
    "gatekeeper-2": (40, 80, 160),
}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _pick(section: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: section.get(key) for key in keys}


def build_report(
    machine: dict[str, Any],
    options: Options,
    scenarios: Mapping[str, dict[str, Any]],
    extras: Mapping[str, dict[str, Any]],
    notes: list[str],
) -> dict[str, Any]:
    """Assemble the report from what the suite measured."""
    rows = [scenarios[name] for name in _ORDER if name in scenarios]
    rps = {row["name"]: row["rps"] for row in rows}
    cpu = {row["name"]: row.get("cpu_us_per_request") for row in rows}
    skipped = [
        {"name": row["name"], "reason": row["reason"]} for row in rows if row["status"] != "ok"
    ]
    skipped += [
        {"name": name, "reason": extra.get("reason")}
        for name, extra in extras.items()
        if extra.get("status") != "ok"
    ]
    writebehind = extras.get("writebehind", {})
    if writebehind.get("devices_per_s_skipped"):
        skipped.append(
            {"name": "writebehind.devices_per_s", "reason": writebehind["devices_per_s_skipped"]}
        )
    opts = asdict(options)
    opts["only"] = sorted(options.only)
    return {
        "machine": machine,
        "scenarios": rows,
        "ratios": {
            "gatekeeper_vs_nginx": _ratio(rps.get("gatekeeper-1"), rps.get("nginx")),
            "gatekeeper_vs_naive": _ratio(rps.get("gatekeeper-1"), rps.get("naive")),
            "gatekeeper_vs_nginx_cpu": _ratio(cpu.get("gatekeeper-1"), cpu.get("nginx")),
        },
        "propagation_ms": _pick(
            extras.get("propagation", {}), "block_p50", "block_p99", "unblock_p99"
        ),
        "writebehind": _pick(writebehind, "devices_per_s", "rows_per_1000_requests"),
        "half_load": _pick(extras.get("half-load", {}), "added_p50_ms", "added_p99_ms"),
        "details": dict(extras),
        "skipped": skipped,
        "notes": notes,
        "options": opts,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _count(value: Any) -> str:
    return "—" if value is None else f"{value:,.0f}"


def markdown(report: Mapping[str, Any]) -> str:
    """The results as Markdown: a scenario table, then the other figures."""
    machine = report["machine"]
    lines = [
        f"Machine: {machine['cpus']} CPUs, Python {machine['python']}, commit "
        f"`{machine['commit']}`; {machine['cpu_pinning']}.  ",
        f"Load: {machine['load_generator']}; upstream: {machine['upstream']}.",
        "",
        "| scenario | req/s | p50 ms | p99 ms | CPU µs/req | cycles/req | instructions/req "
        "| status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["scenarios"]:
        status = "ok" if row["status"] == "ok" else f"{row['status']}: {row.get('reason')}"
        lines.append(
            f"| {row['name']} | {_fmt(row['rps'])} | {_fmt(row['p50_ms'])} | "
            f"{_fmt(row['p99_ms'])} | {_fmt(row.get('cpu_us_per_request'), 1)} | "
            f"{_count(row.get('cycles_per_request'))} | "
            f"{_count(row.get('instructions_per_request'))} | {status} |"
        )
    ratios, prop = report["ratios"], report["propagation_ms"]
    wb, half = report["writebehind"], report["half_load"]
    lines += [
        "",
        "| figure | value | target |",
        "|---|---:|---|",
        f"| gatekeeper-1 / nginx | {_fmt(ratios['gatekeeper_vs_nginx'])} | ≥ 0.40 |",
        f"| gatekeeper-1 / naive | {_fmt(ratios['gatekeeper_vs_naive'])} | ≥ 3 |",
        f"| gatekeeper-1 / nginx, CPU per request | "
        f"{_fmt(ratios.get('gatekeeper_vs_nginx_cpu'))} | ≤ 2.5 |",
        f"| added p50 at half load (ms) | {_fmt(half['added_p50_ms'])} | ≤ 0.3 |",
        f"| added p99 at half load (ms) | {_fmt(half['added_p99_ms'])} | ≤ 1 |",
        f"| block propagation p50 (ms) | {_fmt(prop['block_p50'])} | |",
        f"| block propagation p99 (ms) | {_fmt(prop['block_p99'])} | ≤ 10 |",
        f"| unblock propagation p99 (ms) | {_fmt(prop['unblock_p99'])} | ≤ 10 |",
        f"| write-behind devices/s | {_fmt(wb['devices_per_s'])} | ≥ 50,000 |",
        f"| rows written per 1,000 requests of one device | "
        f"{_fmt(wb['rows_per_1000_requests'], 1)} | |",
    ]
    if report["skipped"]:
        lines += ["", "Skipped or failed:", ""]
        lines += [f"- `{item['name']}`: {item['reason']}" for item in report["skipped"]]
    if report["notes"]:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _bars(report: Mapping[str, Any]) -> list[Bar]:
    bars: list[Bar] = []
    for row in report["scenarios"]:
        if row["status"] == "ok":
            caption = f"{row['rps']:,.0f} req/s  p99 {row['p99_ms']:.2f} ms"
        else:
            caption = row["status"]
        bars.append((row["name"], row["rps"], caption, _COLORS.get(row["name"], (90, 90, 90))))
    return bars


def write_outputs(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write latest.json, latest.md and latest.png into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md", out_dir / "latest.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    write_png(paths[2], "proxy throughput (requests/s, median of runs)", _bars(report))
    return paths


def update_docs(report: Mapping[str, Any], docs: Path) -> bool:
    """Replace the results section of docs/performance.md; False if it has no markers."""
    text = docs.read_text() if docs.exists() else ""
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return False
    head, rest = text.split(DOCS_BEGIN, 1)
    _old, tail = rest.split(DOCS_END, 1)
    docs.write_text(f"{head}{DOCS_BEGIN}\n{markdown(report)}{DOCS_END}{tail}")
    return True
