"""CPU, memory and open files of the node's processes, by role, for the supervisor's /metrics.

prometheus-client's process metrics describe one process, and in multiprocess mode the workers
report none; an SRE sizing a pod wants all of it. The supervisor reads ``/proc`` for itself, its
workers and its recorder at each scrape and sums each role:
``gatekeeper_process_cpu_seconds_total{role}``, ``gatekeeper_process_resident_memory_bytes{role}``
and ``gatekeeper_process_open_fds{role}``, with ``role`` one of supervisor, worker, recorder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["NodeProcessCollector"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _figures(pid: int) -> tuple[float, int, int] | None:
    """CPU seconds, resident bytes and open descriptors of ``pid``; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # After the command name (which may hold spaces): utime and stime are fields 14, 15.
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            resident = int(statm.read().split()[1]) * _PAGE
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS, resident, fds


class NodeProcessCollector(Collector):
    """``pids()`` says which processes have which role at the moment of a scrape."""

    def __init__(self, pids: Callable[[], Mapping[str, Iterable[int]]]) -> None:
        self._pids = pids

    def collect(self) -> Iterable[Metric]:
        cpu = CounterMetricFamily(
            "gatekeeper_process_cpu_seconds",
            "User and system CPU time of the node's processes, by role.",
            labels=["role"],
        )
        memory = GaugeMetricFamily(
            "gatekeeper_process_resident_memory_bytes",
            "Resident memory of the node's processes, by role.",
            labels=["role"],
        )
        files = GaugeMetricFamily(
            "gatekeeper_process_open_fds",
            "Open file descriptors of the node's processes, by role.",
            labels=["role"],
        )
        for role, pids in self._pids().items():
            seen = [f for f in (_figures(pid) for pid in pids) if f is not None]
            cpu.add_metric([role], sum(f[0] for f in seen))
            memory.add_metric([role], sum(f[1] for f in seen))
            files.add_metric([role], sum(f[2] for f in seen))
        return [cpu, memory, files]
