"""docs/reliability.md as Markdown: the store faults, the bypass corpus, other probes, the soak.

:func:`render` lays out the page from the probe files' runs (:class:`FileRun`), the judged soak
and :class:`Meta`; the same sections come in the same order whatever ran, so two generations
diff line by line. :mod:`benchmarks.reliability` runs the probes and writes the page.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cells import cell
from .comparisons import FAULTS, KINDS, STORES
from .soakverdict import soak_markdown, verdict_line

__all__ = ["BYPASS_FIGURES", "FAULT_FIGURES", "FileRun", "Meta", "render"]

FAULT_FIGURES = (
    "requests",
    "failed",
    "leaked_blocked",
    "acked_writes",
    "lost_writes",
    "detect_seconds",
    "recover_seconds",
)
BYPASS_FIGURES = ("cases", "leaked", "reached_upstream")


@dataclass(slots=True)
class FileRun:
    """One probe file: how it was run, how it ended, and the figures its tests recorded."""

    path: str
    what: str
    command: str
    status: str  # "passed", "failed (…)", "not run (…)"
    seconds: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Meta:
    date: str
    commit: str
    soak_command: str


def _figures(record: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    hidden = {"probe", "at", "source", *skip}
    shown = [f"{k}={cell(v)}" for k, v in sorted(record.items()) if k not in hidden]
    return ", ".join(shown) or "—"


def _by_probe(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        grouped.setdefault(str(record.get("probe")), []).append(record)
    return grouped


def _fault_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    grouped = _by_probe(records)
    head = " | ".join(f.replace("_", " ") for f in FAULT_FIGURES)
    lines = [
        "## Store faults",
        "",
        "What the edge did while a store was stopped, hung or crashed under traffic "
        "(`failed`: requests that did not get their normal answer; `leaked_blocked`: "
        "blocked devices forwarded; `lost_writes`: acknowledged writes missing afterwards).",
        "",
        f"| fault | {head} | source |",
        "|---|" + "---:|" * len(FAULT_FIGURES) + "---|",
    ]
    for probe in FAULTS:
        if probe not in grouped:
            lines.append(f"| `{probe}` |" + " |" * len(FAULT_FIGURES) + " not run |")
        for record in grouped.get(probe, []):
            cells = " | ".join(cell(record.get(name)) for name in FAULT_FIGURES)
            lines.append(f"| `{probe}` | {cells} | `{record.get('source', '?')}` |")
    lines += [
        "",
        "Stopped: a clean shutdown. Hung: the server keeps its connections and never "
        "answers (every process SIGSTOPped). Crashed: SIGKILL, then a restart.",
        "",
        "### The same faults elsewhere",
        "",
        "What nginx, Envoy and Kong document for the equivalent fault, beside the "
        "gatekeeper's contract (`DESIGN.md`) and what was measured above. These are their "
        "documented behaviours and defaults, not measurements.",
        "",
    ]
    for store in STORES:
        lines += [f"#### {store.title}", "", "| | behaviour |", "|---|---|"]
        for kind in KINDS:
            measured = grouped.get(f"{store.name}.{kind}")
            figures = "; ".join(_figures(r) for r in measured) if measured else "not run"
            lines.append(f"| gatekeeper, {kind}: measured | {figures} |")
        lines += [
            f"| gatekeeper: contract | {store.contract} |",
            f"| nginx | {store.nginx} |",
            f"| Envoy | {store.envoy} |",
            f"| Kong | {store.kong} |",
            f"| when hung | {store.hung} |",
            f"| when crashed | {store.crashed} |",
            "",
        ]
    return lines


def _bypass_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [r for r in records if str(r.get("probe", "")).startswith("bypass.")]
    lines = [
        "## Blocked-device bypass corpus",
        "",
        "Generated variants of each class of hostile request a blocked device could send to "
        "slip past the check. `leaked`: requests of the blocked device that the upstream "
        "would have served (must be 0); `reached upstream`: everything the recording "
        "upstream saw, allowed look-alikes included.",
        "",
        "| class | "
        + " | ".join(f.replace("_", " ") for f in BYPASS_FIGURES)
        + " | other figures |",
        "|---|" + "---:|" * len(BYPASS_FIGURES) + "---|",
    ]
    for record in sorted(rows, key=lambda r: str(r["probe"])):
        cells = " | ".join(cell(record.get(name)) for name in BYPASS_FIGURES)
        other = _figures(record, BYPASS_FIGURES)
        lines.append(f"| `{str(record['probe']).removeprefix('bypass.')}` | {cells} | {other} |")
    if not rows:
        lines.append("| not run |" + " |" * len(BYPASS_FIGURES) + " |")
    else:
        totals = " | ".join(cell(sum(int(r.get(n) or 0) for r in rows)) for n in BYPASS_FIGURES)
        lines.append(f"| **total ({len(rows)} classes)** | {totals} | |")
    return [*lines, ""]


def _other_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    known = set(FAULTS)
    rows = [
        r
        for r in records
        if r.get("probe") not in known and not str(r.get("probe", "")).startswith("bypass.")
    ]
    lines = [
        "## Other probes",
        "",
        "Durability and any probe not listed above.",
        "",
        "| probe | figures | source |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{r.get('probe')}` | {_figures(r)} | `{r.get('source', '?')}` |"
        for r in sorted(rows, key=lambda r: str(r.get("probe")))
    ]
    if not rows:
        lines.append("| none recorded | | |")
    return [*lines, ""]


def _probes_section(
    runs: Sequence[FileRun],
    meta: Meta,
    soak: Mapping[str, Any] | None,
) -> list[str]:
    lines = [
        "## Probes",
        "",
        f"Generated {meta.date} at commit `{meta.commit}` by `python -m benchmarks "
        "reliability`. Each file ran alone, with its own figures file.",
        "",
        "| file | what | command | result | seconds |",
        "|---|---|---|---|---:|",
    ]
    for run in runs:
        lines.append(
            f"| `{run.path}` | {run.what} | `{run.command}` | {run.status} | {cell(run.seconds)} |"
        )
    soak_status = "not run" if soak is None else verdict_line(soak)
    lines += [
        f"| soak | steady mixed traffic | `{meta.soak_command}` | {soak_status} | "
        f"{cell(None if soak is None else soak['options']['seconds'])} |",
        "",
        "Every figure, as recorded:",
        "",
        "| probe | figures | command | date (UTC) | commit |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run.records:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(r.get("at", 0))))
            lines.append(
                f"| `{r.get('probe')}` | {_figures(r)} | `{run.command}` | {when} | "
                f"`{meta.commit}` |"
            )
    if not any(run.records for run in runs):
        lines.append("| none recorded | | | | |")
    return [*lines, ""]


def render(runs: Sequence[FileRun], soak: Mapping[str, Any] | None, meta: Meta) -> str:
    """The whole of docs/reliability.md; the same sections in the same order whatever ran."""
    records = [r for run in runs for r in run.records]
    lines = [
        "# Reliability",
        "",
        "<!-- generated by `python -m benchmarks reliability`; edit "
        "benchmarks/reliability_report.py and benchmarks/comparisons.py, not this file -->",
        "",
        "What the gatekeeper does when the stores it depends on fail, whether any request lets "
        "a blocked device through, and whether a long run leaks. Every gatekeeper figure here "
        "was measured by the probe named in [Probes](#probes).",
        "",
        *_fault_section(records),
        *_bypass_section(records),
        *_other_section(records),
        "## Soak",
        "",
    ]
    if soak is None:
        lines += ["Not run.", ""]
    else:
        lines += [soak_markdown(soak).rstrip("\n"), ""]
    lines += _probes_section(runs, meta, soak)
    return "\n".join(lines).rstrip("\n") + "\n"
