"""``python -m benchmarks reliability``: run the reliability probes and write docs/reliability.md.

Each file in :data:`PROBE_FILES` runs under pytest with ``GATEKEEPER_RELIABILITY_OUT`` naming a
fresh JSON-lines file, into which its tests write their figures (``tests/reliability_log.py``);
then a short soak runs (:mod:`benchmarks.soak`). The page shows every fault in :data:`FAULTS`
with what was measured beside what nginx, Envoy and Kong do for the same fault. A probe file that
does not exist, or a fault no probe recorded, is shown as "not run": the layout never depends on
what ran, so two generations diff line by line.

The soak's judgement lives here too (:func:`analyse`, rule :data:`RULE`): :mod:`benchmarks.soak`
only measures, and ``python -m benchmarks soak`` and this report judge its samples the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .soak import BLOCKED_EVERY, SoakOptions, run_soak

__all__ = ["FAULTS", "PROBE_FILES", "RULE", "STORES", "FileRun", "Meta", "analyse",
           "read_records", "render", "run_probe_file", "soak_markdown", "write_soak_outputs"]

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

FAULT_FIGURES = ("requests", "failed", "leaked_blocked", "acked_writes", "lost_writes",
                 "detect_seconds", "recover_seconds")
BYPASS_FIGURES = ("cases", "leaked", "reached_upstream")

_PG_CONTRACT = (
    "Postgres is off the request path: workers keep serving, the recorder keeps coalescing in a "
    "bounded buffer, retries with backoff and counts what it must drop; admin writes fail "
    "(Postgres is written first), so no acknowledged write exists only in Redis.")
_PG_NGINX = (
    "No database. Access rules (`allow`/`deny`, `map`, `geo`) are configuration, changed by a "
    "reload; logs go to local files (`access_log`). Nothing here for a database fault to break, "
    "and no per-device activity is kept.")
_PG_ENVOY = (
    "No database. Routes and RBAC policies come from static config or a control plane (xDS); "
    "when the management server is unreachable Envoy keeps the previous configuration and "
    "retries (`control_plane.connected_state` shows it). No activity store of its own.")
_PG_KONG = (
    "Traditional (DB) mode caches entities in memory and avoids the database when proxying: "
    "`db_cache_ttl` (default 0, never expires), `db_resurrect_ttl` (default 30 s, stale entities "
    "are kept when a refresh fails) and `db_cache_warmup_entities` (default `services`) decide "
    "what keeps working; a cache miss needs the database, and the Admin API cannot write. "
    "DB-less and hybrid data planes have no database on the request path.")
_REDIS_CONTRACT = (
    "Each worker serves from its last mirror of the blocked set (`gatekeeper_blocklist_stale` = "
    "1) and resyncs on reconnect; a worker that never loaded a mirror is not ready and answers "
    "503 unless `fail_open` is set. An admin change made meanwhile is committed to Postgres and "
    "reaches the edge when the admin API's background reconcile succeeds (retried with backoff, "
    "at most 30 s apart).")
_REDIS_NGINX = (
    "No external block store: a block list is configuration, applied on reload, so no store "
    "fault can leak a block (and a block needs a reload). With `auth_request` the decision is a "
    "subrequest: 2xx allows, 401/403 deny, any other outcome is an error and the request fails "
    "(closed); stock nginx has no fail-open switch for it.")
_REDIS_ENVOY = (
    "`ext_authz` asks an external service per request: `failure_mode_allow: false` (default) "
    "fails closed with `status_on_error` (default 403) when the service is down or times out; "
    "`true` forwards unchecked and counts `ext_authz.failure_mode_allowed`. The RBAC filter "
    "decides in-process from its config, with no store to lose. Health checking and outlier "
    "detection (defaults: 5 consecutive 5xx, 10 s sweep, 30 s base ejection) eject failing "
    "upstream hosts; they watch upstreams, not a policy store.")
_REDIS_KONG = (
    "Consumers, credentials and ACLs live in the database cache, not in Redis. Redis backs the "
    "rate-limiting plugin (`policy: redis`): `fault_tolerant: true` (default) proxies without "
    "limiting while Redis is unreachable, `false` answers 500.")

_HUNG_PG = ("A hung server accepts connections and never answers, so only timeouts detect "
            "it; Kong bounds each Postgres connect, read and write with `pg_timeout` (default "
            "5000 ms).")
_HUNG_REDIS = ("A hung server is detected only by timeouts: Envoy's ext_authz call by its "
               "service `timeout` (200 ms by default for gRPC), Kong's rate-limiting by its "
               "Redis timeout (2000 ms by default), then each applies its failure mode.")
_CRASHED = ("A crash drops every connection without a goodbye; what was acknowledged must "
            "already be on disk (Postgres: committed transactions in the WAL).")


@dataclass(frozen=True, slots=True)
class Store:
    """One store the gatekeeper depends on, and what the others do when theirs fails."""

    name: str
    title: str
    contract: str
    nginx: str
    envoy: str
    kong: str
    hung: str
    crashed: str = _CRASHED


STORES: tuple[Store, ...] = (
    Store("postgres", "Postgres", _PG_CONTRACT, _PG_NGINX, _PG_ENVOY, _PG_KONG, _HUNG_PG),
    Store("redis", "Redis (Valkey)", _REDIS_CONTRACT, _REDIS_NGINX, _REDIS_ENVOY, _REDIS_KONG,
          _HUNG_REDIS),
)
KINDS = ("stopped", "hung", "crashed")
# The fault probes, named as tests/test_store_faults.py records them: "<store>.<kind>".
FAULTS: tuple[str, ...] = tuple(f"{store.name}.{kind}" for store in STORES for kind in KINDS)


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
            cwd=ROOT, env=dict(os.environ, **{ENV: str(out)}), capture_output=True, text=True,
            timeout=timeout, check=False)
        verdict = "passed" if done.returncode == 0 else "failed"
        status = f"{verdict} ({_pytest_outcome(done.stdout)})"
    except subprocess.TimeoutExpired:
        status = f"failed (timed out after {timeout:.0f} s)"
    run = FileRun(probe.path, probe.what, command, status,
                  round(time.monotonic() - started, 1), read_records(out))
    for record in run.records:
        record["source"] = probe.path
    return run


# -- the soak's judgement ----------------------------------------------------------------------

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
    "a short run cannot tell growth smaller than the allowances from noise.")


def git_commit() -> str:
    """The short commit, with ``+dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()
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
    peaks = {key: (max(p[key] for _, p in first), max(p[key] for _, p in second))
             for key in ("fds", "tcp")}
    return {
        "pid": series[0][1]["pid"], "rss_start_mib": round(mib(series[0]), 1),
        "rss_mid_mib": round(mib(first[-1]), 1), "rss_end_mib": round(mib(series[-1]), 1),
        "growth_first_mib": round(growth1, 2), "growth_second_mib": round(growth2, 2),
        "slope_second_mib_per_min": round(slope2, 3),
        "fds_max": list(peaks["fds"]), "tcp_max": list(peaks["tcp"]),
        "peers": {peer: [series[0][1].get("tcp_peers", {}).get(peer, 0),
                         series[-1][1].get("tcp_peers", {}).get(peer, 0)]
                  for peer in sorted({*series[0][1].get("tcp_peers", {}),
                                      *series[-1][1].get("tcp_peers", {})})},
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
        per_request = max(0.0, worst[1]["slope_second_mib_per_min"]) * 2**20 / (mean_rps * 60
                                                                                 or 1.0)
        verdict = (f"memory {'plateaus' if memory else 'grows'}; descriptors and connections "
                   f"{'steady' if steady else 'grow'}; steepest second-half RSS slope "
                   f"{worst[1]['slope_second_mib_per_min']:+.3f} MiB/min ({worst[0]}), "
                   f"≤ {per_request:.1f} bytes per request at {mean_rps:.0f} req/s")
    if partial:
        verdict += f"; not there for the whole run: {', '.join(partial)}"
    analysis = {"rule": RULE, "verdict": verdict, "memory_plateaus": memory,
                "descriptors_steady": steady, "mean_rps": round(mean_rps, 1),
                "partial": partial, "processes": processes}
    return {**result, "commit": git_commit(), "analysis": analysis}


def _problems(client: Mapping[str, Any]) -> int:
    """Answers that were neither a success nor a block's 403, plus socket errors."""
    return int(client.get("errors", 0)) + sum(int(v) for k, v in client.items()
                                              if k.startswith("status_"))


def _verdict_line(result: Mapping[str, Any]) -> str:
    client = result["client"]
    return (f"{result['analysis']['verdict']}; {_problems(client)} failed of "
            f"{client.get('sent', 0)} requests, {client.get('blocked_forwarded', 0)} blocked "
            "forwarded")


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
        f"; {result['machine']['cpus']} CPUs, commit `{result.get('commit', '?')}`.", "",
        f"Client: {client.get('sent', 0):,} sent, {client.get('ok', 0):,} 2xx, "
        f"{client.get('denied', 0):,} 403, {_problems(client)} failed, "
        f"{client.get('blocked_forwarded', 0)} of {client.get('blocked_sent', 0)} requests from "
        f"blocked devices forwarded, {client.get('connects', 0):,} connections opened "
        f"({client.get('server_closed', 0)} keep-alive ones closed by the proxy), "
        f"{client.get('new_devices', 0):,} new devices; admin API answers: "
        f"{', '.join(f'{k}: {v}' for k, v in result['admin_statuses'].items()) or 'none'}.", "",
        f"**Verdict: {a['verdict']}.**", "", f"Rule: {a['rule']}", "",
        "| t (s) | req/s | failed | pending | " + " | ".join(f"{n} RSS MiB" for n in names)
        + " | fds | TCP | TIME_WAIT (host) |", "|" + "---:|" * (7 + len(names)),
    ]
    samples = result["samples"]
    for i in _thin(len(samples), 20):
        s = samples[i]
        rss = " | ".join(_cell(round(s["processes"][n]["rss_kb"] / 1024, 1))
                         if n in s["processes"] else "—" for n in names)
        procs = s["processes"].values()
        t = f"{s['t']:.0f}" + ("" if s.get("load", True) else " (after)")
        lines.append(f"| {t} | {s['rps']:.0f} | {_problems(s['client'])} | "
                     f"{_cell(s['metrics'].get('pending'))} | {rss} | "
                     f"{sum(p['fds'] for p in procs)} | {sum(p['tcp'] for p in procs)} | "
                     f"{s['time_wait']} |")
    lines += ["", "| process | RSS start → mid → end (MiB) | growth 1st / 2nd half (MiB) | "
              "2nd-half slope (MiB/min) | max fds 1st / 2nd | max TCP 1st / 2nd | "
              "established by peer, first → last | plateaus |",
              "|---|---|---|---:|---|---|---|---|"]
    for name, p in a["processes"].items():
        peers = ", ".join(f"{k} {v[0]}→{v[1]}" for k, v in p.get("peers", {}).items())
        lines.append(
            f"| {name} | {p['rss_start_mib']} → {p['rss_mid_mib']} → {p['rss_end_mib']} | "
            f"{p['growth_first_mib']:+.2f} / {p['growth_second_mib']:+.2f} | "
            f"{p['slope_second_mib_per_min']:+.3f} | {p['fds_max'][0]} / {p['fds_max'][1]} | "
            f"{p['tcp_max'][0]} / {p['tcp_max'][1]} | {peers or '—'} | "
            f"{'yes' if p['plateaus'] else 'no'} |")
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


# -- rendering ---------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def _figures(record: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    hidden = {"probe", "at", "source", *skip}
    shown = [f"{k}={_cell(v)}" for k, v in sorted(record.items()) if k not in hidden]
    return ", ".join(shown) or "—"


def _by_probe(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        grouped.setdefault(str(record.get("probe")), []).append(record)
    return grouped


def _fault_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    grouped = _by_probe(records)
    head = " | ".join(f.replace("_", " ") for f in FAULT_FIGURES)
    lines = ["## Store faults", "",
             "What the edge did while a store was stopped, hung or crashed under traffic "
             "(`failed`: requests that did not get their normal answer; `leaked_blocked`: "
             "blocked devices forwarded; `lost_writes`: acknowledged writes missing afterwards).",
             "", f"| fault | {head} | source |", "|---|" + "---:|" * len(FAULT_FIGURES) + "---|"]
    for probe in FAULTS:
        if probe not in grouped:
            lines.append(f"| `{probe}` |" + " |" * len(FAULT_FIGURES) + " not run |")
        for record in grouped.get(probe, []):
            cells = " | ".join(_cell(record.get(name)) for name in FAULT_FIGURES)
            lines.append(f"| `{probe}` | {cells} | `{record.get('source', '?')}` |")
    lines += ["", "Stopped: a clean shutdown. Hung: the server keeps its connections and never "
              "answers (every process SIGSTOPped). Crashed: SIGKILL, then a restart.", "",
              "### The same faults elsewhere", "",
              "What nginx, Envoy and Kong document for the equivalent fault, beside the "
              "gatekeeper's contract (`DESIGN.md`) and what was measured above. These are their "
              "documented behaviours and defaults, not measurements.", ""]
    for store in STORES:
        lines += [f"#### {store.title}", "", "| | behaviour |", "|---|---|"]
        for kind in KINDS:
            measured = grouped.get(f"{store.name}.{kind}")
            figures = "; ".join(_figures(r) for r in measured) if measured else "not run"
            lines.append(f"| gatekeeper, {kind}: measured | {figures} |")
        lines += [f"| gatekeeper: contract | {store.contract} |", f"| nginx | {store.nginx} |",
                  f"| Envoy | {store.envoy} |", f"| Kong | {store.kong} |",
                  f"| when hung | {store.hung} |", f"| when crashed | {store.crashed} |", ""]
    return lines


def _bypass_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [r for r in records if str(r.get("probe", "")).startswith("bypass.")]
    lines = ["## Blocked-device bypass corpus", "",
             "Generated variants of each class of hostile request a blocked device could send to "
             "slip past the check. `leaked`: requests of the blocked device that the upstream "
             "would have served (must be 0); `reached upstream`: everything the recording "
             "upstream saw, allowed look-alikes included.", "",
             "| class | " + " | ".join(f.replace("_", " ") for f in BYPASS_FIGURES)
             + " | other figures |", "|---|" + "---:|" * len(BYPASS_FIGURES) + "---|"]
    for record in sorted(rows, key=lambda r: str(r["probe"])):
        cells = " | ".join(_cell(record.get(name)) for name in BYPASS_FIGURES)
        other = _figures(record, BYPASS_FIGURES)
        lines.append(f"| `{str(record['probe']).removeprefix('bypass.')}` | {cells} | {other} |")
    if not rows:
        lines.append("| not run |" + " |" * len(BYPASS_FIGURES) + " |")
    else:
        totals = " | ".join(_cell(sum(int(r.get(n) or 0) for r in rows)) for n in BYPASS_FIGURES)
        lines.append(f"| **total ({len(rows)} classes)** | {totals} | |")
    return [*lines, ""]


def _other_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    known = set(FAULTS)
    rows = [r for r in records if r.get("probe") not in known
            and not str(r.get("probe", "")).startswith("bypass.")]
    lines = ["## Other probes", "", "Durability and any probe not listed above.", "",
             "| probe | figures | source |", "|---|---|---|"]
    lines += [f"| `{r.get('probe')}` | {_figures(r)} | `{r.get('source', '?')}` |"
              for r in sorted(rows, key=lambda r: str(r.get("probe")))]
    if not rows:
        lines.append("| none recorded | | |")
    return [*lines, ""]


def _probes_section(runs: Sequence[FileRun], meta: Meta, soak: Mapping[str, Any] | None,
                    ) -> list[str]:
    lines = ["## Probes", "",
             f"Generated {meta.date} at commit `{meta.commit}` by `python -m benchmarks "
             "reliability`. Each file ran alone, with its own figures file.", "",
             "| file | what | command | result | seconds |", "|---|---|---|---|---:|"]
    for run in runs:
        lines.append(f"| `{run.path}` | {run.what} | `{run.command}` | {run.status} | "
                     f"{_cell(run.seconds)} |")
    soak_status = "not run" if soak is None else _verdict_line(soak)
    lines += [f"| soak | steady mixed traffic | `{meta.soak_command}` | {soak_status} | "
              f"{_cell(None if soak is None else soak['options']['seconds'])} |", "",
              "Every figure, as recorded:", "",
              "| probe | figures | command | date (UTC) | commit |", "|---|---|---|---|---|"]
    for run in runs:
        for r in run.records:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(r.get("at", 0))))
            lines.append(f"| `{r.get('probe')}` | {_figures(r)} | `{run.command}` | {when} | "
                         f"`{meta.commit}` |")
    if not any(run.records for run in runs):
        lines.append("| none recorded | | | | |")
    return [*lines, ""]


def render(runs: Sequence[FileRun], soak: Mapping[str, Any] | None, meta: Meta) -> str:
    """The whole of docs/reliability.md; the same sections in the same order whatever ran."""
    records = [r for run in runs for r in run.records]
    lines = [
        "# Reliability", "",
        "<!-- generated by `python -m benchmarks reliability`; edit benchmarks/reliability.py, "
        "not this file -->", "",
        "What the gatekeeper does when the stores it depends on fail, whether any request lets "
        "a blocked device through, and whether a long run leaks. Every gatekeeper figure here "
        "was measured by the probe named in [Probes](#probes).", "",
        *_fault_section(records), *_bypass_section(records), *_other_section(records),
        "## Soak", "",
    ]
    if soak is None:
        lines += ["Not run.", ""]
    else:
        lines += [soak_markdown(soak).rstrip("\n"), ""]
    lines += _probes_section(runs, meta, soak)
    return "\n".join(lines).rstrip("\n") + "\n"


def generate(out: Path, soak_seconds: float, progress: Any) -> tuple[Path, list[FileRun]]:
    """Run every probe file and the soak, write ``out``; returns it and the file runs."""
    runs: list[FileRun] = []
    with tempfile.TemporaryDirectory(prefix="gatekeeper-reliability-") as work:
        for probe in PROBE_FILES:
            progress.step("reliability", f"pytest {probe.path}")
            runs.append(run_probe_file(probe, Path(work)))
            progress.say(f"    {runs[-1].status}, {len(runs[-1].records)} figure(s)")
    soak = analyse(run_soak(SoakOptions(seconds=soak_seconds), progress)) if soak_seconds else None
    meta = Meta(date=time.strftime("%Y-%m-%d", time.gmtime()), commit=git_commit(),
                soak_command=f"python -m benchmarks soak --minutes {soak_seconds / 60:g}")
    out.write_text(render(runs, soak, meta))
    return out, runs
