"""CPU spent by the servers of a scenario while the load generator runs, per request served.

:class:`CpuMeter` brackets one measured window. It reads ``utime + stime`` (clock ticks) from
``/proc/<pid>/stat`` of every process of the scenario's process trees (each root, its
descendants, and anything left in the root's session) at the start and at the end of the
window, and, while ``perf stat -e cycles,instructions -p PID,...`` works here, counts cycles and
instructions over the same window. A process that starts during the window counts from zero; one
that exits during it is lost (the servers measured here do neither while under load).

Only the processes given as roots are counted: the upstream and the load generator are not,
unless a scenario passes the upstream as its own server (``direct``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .procfs import runs_module

__all__ = ["CpuMeter", "PerfState", "per_request", "process_times", "tree"]

_TICK = os.sysconf("SC_CLK_TCK")
_PERF_ATTACH_S = 0.25  # perf prints nothing when attached; this is ample on an idle machine


@dataclass(frozen=True, slots=True)
class _Proc:
    ppid: int
    session: int
    ticks: int


def process_times() -> dict[int, _Proc]:
    """Every process: its parent, its session and its ``utime + stime`` in clock ticks."""
    found: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # The command name may hold spaces and parentheses: split after the last ')'.
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                # fields[0] is field 3 of proc(5): ppid is 4, session 6, utime 14, stime 15.
                found[int(entry.name)] = _Proc(
                    ppid=int(fields[1]),
                    session=int(fields[3]),
                    ticks=int(fields[11]) + int(fields[12]),
                )
    return found


def tree(roots: Iterable[int], procs: dict[int, _Proc]) -> set[int]:
    """The roots, their descendants, and every process in a root's session."""
    roots = set(roots)
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.ppid, []).append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in procs]
    todo += [pid for pid, proc in procs.items() if proc.session in roots]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


class PerfState:
    """Whether ``perf stat`` may still be tried in this run (it is given up after a failure)."""

    def __init__(self, enabled: bool = True) -> None:
        self.binary = shutil.which("perf") if enabled else None
        self.reason: str | None = None if self.binary else "perf not installed"

    def give_up(self, reason: str) -> None:
        self.binary, self.reason = None, reason


class CpuMeter:
    """``with CpuMeter(roots, work, perf, prefix) as meter: <load>``; then :meth:`figures`."""

    def __init__(
        self, roots: Iterable[int], work: Path, perf: PerfState, prefix: list[str]
    ) -> None:
        self.roots = tuple(roots)
        self.work = work
        self.perf = perf
        self.prefix = prefix
        self._start: dict[int, int] = {}
        self.cpu_s: float | None = None
        # The part of cpu_s spent by a gatekeeper recorder process (None when there is none).
        self.recorder_cpu_s: float | None = None
        self.counts: dict[str, float] | None = None
        self._perf: subprocess.Popen[bytes] | None = None
        self._out = work / "perf-stat.csv"

    def __enter__(self) -> CpuMeter:
        procs = process_times()
        pids = tree(self.roots, procs)
        if self.perf.binary is not None and pids:
            self._start_perf(sorted(pids))
        procs = process_times()  # again: perf's attach time is outside the window
        self._start = {pid: procs[pid].ticks for pid in tree(self.roots, procs)}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        procs = process_times()
        pids = tree(self.roots, procs)
        spent = {pid: max(0, procs[pid].ticks - self._start.get(pid, 0)) for pid in pids}
        self.cpu_s = sum(spent.values()) / _TICK
        recorders = [pid for pid in pids if runs_module(pid, "gatekeeper.runtime.recorder")]
        if recorders:
            self.recorder_cpu_s = sum(spent[pid] for pid in recorders) / _TICK
        self.counts = self._stop_perf()

    def _start_perf(self, pids: list[int]) -> None:
        assert self.perf.binary is not None
        self._out.unlink(missing_ok=True)
        argv = [
            *self.prefix,
            self.perf.binary,
            "stat",
            "-x,",
            "-e",
            "cycles,instructions",
            "-p",
            ",".join(str(pid) for pid in pids),
            "-o",
            str(self._out),
        ]
        try:
            self._perf = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            self.perf.give_up(f"perf could not start: {exc}")
            return
        time.sleep(_PERF_ATTACH_S)
        if self._perf.poll() is not None:  # not permitted, no such event, ...
            self._stop_perf()

    def _stop_perf(self) -> dict[str, float] | None:
        perf, self._perf = self._perf, None
        if perf is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            perf.send_signal(signal.SIGINT)
        try:
            _, err = perf.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.communicate()
            self.perf.give_up("perf stat did not stop")
            return None
        counts = _parse(self._out)
        if perf.returncode not in (0, -signal.SIGINT) or counts is None:
            last = (err.decode(errors="replace").strip().splitlines() or ["no counts"])[-1]
            self.perf.give_up(f"perf stat unusable here ({last})")
            return None
        return counts

    def figures(self, requests: int) -> dict[str, Any]:
        """The window's totals and per-request figures (None where not measured)."""
        counts = self.counts or {}
        return {
            "cpu_s": self.cpu_s,
            "cycles": counts.get("cycles"),
            "instructions": counts.get("instructions"),
            "cpu_us_per_request": per_request(self.cpu_s, requests, 1e6, 3),
            "recorder_cpu_us_per_request": per_request(self.recorder_cpu_s, requests, 1e6, 3),
            "cycles_per_request": per_request(counts.get("cycles"), requests, 1, 0),
            "instructions_per_request": per_request(counts.get("instructions"), requests, 1, 0),
        }


def per_request(total: float | None, requests: int, scale: float, digits: int) -> float | None:
    """``total * scale / requests`` rounded, or None when either is missing or zero."""
    if not total or requests <= 0:
        return None
    return round(total * scale / requests, digits)


def _parse(path: Path) -> dict[str, float] | None:
    """``perf stat -x,`` output -> {"cycles": n, "instructions": n}; None without both."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    counts: dict[str, float] = {}
    for line in lines:
        fields = line.split(",")
        if len(fields) > 2 and fields[0][:1].isdigit():
            with contextlib.suppress(ValueError):
                counts[fields[2].split(":")[0]] = float(fields[0])
    if "cycles" not in counts or "instructions" not in counts:
        return None
    return counts
