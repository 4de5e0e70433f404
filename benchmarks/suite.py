"""The proxy benchmark suite: the same load against each scenario, one after another.

Scenarios: ``direct`` (the upstream alone), ``nginx``, ``naive``, ``gatekeeper-1``,
``gatekeeper-2``; then ``latency-at-half-load``, ``propagation`` and ``writebehind``.
A scenario that cannot run (tool not installed, gatekeeper not available) is reported skipped
with its reason; one that breaks is reported failed with its reason; the suite goes on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import statistics
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import propagation, writebehind
from .cpumeter import CpuMeter, PerfState
from .loadgen import LoadGen, Summary, pick_loadgen
from .nginx import nginx_binary, start_nginx_proxy, start_nginx_upstream
from .procs import Child, CpuPlan, HarnessError, free_port, plan_cpus, python_module, wait_port
from .progress import Progress
from .scenario_results import CPU_KEYS, commit, cpu_line, failed, median, skipped
from .stack import GatekeeperStack, blocked_ids, unavailable

__all__ = ["SCENARIOS", "Options", "Suite"]

SCENARIOS = ("direct", "nginx", "naive", "gatekeeper-1", "gatekeeper-2")
EXTRAS = ("half-load", "propagation", "writebehind")
PATH = "/api/bench/items"
_STARTUP_ALLOWANCE = {
    "direct": 0.0,
    "nginx": 1.0,
    "naive": 2.0,
    "gatekeeper-1": 4.0,
    "gatekeeper-2": 4.0,
}


@dataclass(frozen=True, slots=True)
class Options:
    """How much load, how often, with which tools; see ``python -m benchmarks proxy --help``."""

    duration: float = 10.0
    runs: int = 3
    warmup: float = 3.0
    connections: int = 64
    devices: int = 10_000
    trials: int = 200
    writebehind_seconds: float = 5.0
    use_nginx: bool = True
    use_wrk: bool = True
    pin: bool = True
    only: frozenset[str] = frozenset((*SCENARIOS, *EXTRAS))
    quick: bool = False


class Suite:
    """One run of the whole suite; :meth:`run` returns the report (the ``latest.json`` data)."""

    def __init__(self, options: Options, work: Path, progress: Progress) -> None:
        self.opts = options
        self.work = work
        self.progress = progress
        self.cpus: CpuPlan = plan_cpus(options.pin)
        self.loadgen: LoadGen = pick_loadgen(
            work, options.use_wrk, options.connections, options.devices
        )
        self.nginx = nginx_binary() if options.use_nginx else None
        self.notes: list[str] = []
        self.upstream_port = 0
        self.upstream_pid = 0
        self.perf = PerfState()
        self.scenarios: dict[str, dict[str, Any]] = {}
        self.extras: dict[str, dict[str, Any]] = {}

    # -- plan -----------------------------------------------------------------------------

    def _plan(self, gatekeeper: bool) -> None:
        per_scenario = self.opts.warmup + self.opts.runs * self.opts.duration
        for name in SCENARIOS:
            if name in self.opts.only and (gatekeeper or not name.startswith("gatekeeper")):
                self.progress.plan(per_scenario + _STARTUP_ALLOWANCE[name])
        if gatekeeper:
            self.progress.plan(8.0)  # embedded PostgreSQL + Valkey, migrations
            if "half-load" in self.opts.only:
                self.progress.plan(2 * self.opts.duration)
            if "propagation" in self.opts.only:
                self.progress.plan(propagation.estimate(self.opts.trials))
            if "writebehind" in self.opts.only:
                self.progress.plan(writebehind.estimate(self.opts.writebehind_seconds))

    # -- run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        gk_reason = unavailable()
        self._plan(gk_reason is None)
        self._describe(gk_reason)
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._upstream())
            # direct: the server under test is the upstream itself, so its CPU is counted.
            self._scenario(
                "direct",
                lambda: contextlib.nullcontext((self.upstream_port, (self.upstream_pid,))),
            )
            self._scenario("nginx", self._nginx_proxy, self._nginx_missing())
            self._scenario("naive", self._naive_proxy)
            self._gatekeeper(gk_reason)
        return self._report()

    def _describe(self, gk_reason: str | None) -> None:
        say = self.progress.say
        say(f"load generator: {self.loadgen.describe()}")
        if self.loadgen.tool != "wrk":
            self.notes.append("wrk not used (not installed or --no-wrk): built-in load client")
        say(f"cpu: {self.cpus.describe()}")
        upstream = "nginx (fixed small body)" if self.nginx else "built-in asyncio upstream"
        say(f"upstream: {upstream}")
        if self.nginx is None:
            self.notes.append(
                "nginx not used (not installed or --no-nginx): built-in upstream, "
                "nginx scenario skipped"
            )
        if gk_reason is not None:
            say(f"gatekeeper scenarios: skipped ({gk_reason})")
            self.notes.append(f"gatekeeper scenarios skipped: {gk_reason}")

    def _nginx_missing(self) -> str | None:
        if self.nginx is None:
            return "nginx not installed (apt-get install nginx) or --no-nginx given"
        return None

    def _scenario(
        self,
        name: str,
        start: Callable[[], contextlib.AbstractContextManager[tuple[int, tuple[int, ...]]]],
        skip: str | None = None,
    ) -> dict[str, Any] | None:
        """Start the proxy of ``name``, measure it, stop it; returns the result if measured."""
        if name not in self.opts.only:
            return None
        if skip is not None:
            self.progress.say(f"{name}: skipped ({skip})")
            self.scenarios[name] = skipped(name, skip)
            return None
        self.progress.step(name, "starting")
        try:
            with start() as (port, roots):
                self.progress.consume(_STARTUP_ALLOWANCE[name])
                result = self._measure(name, port, roots)
                self.scenarios[name] = result
                self._after(name, port, roots, result)
        except Exception as exc:
            self.progress.say(f"{name}: FAILED {exc}")
            self.progress.say(traceback.format_exc(limit=3))
            self.scenarios[name] = failed(name, exc)
            return None
        return result

    def _metered(self, roots: tuple[int, ...], load: Callable[[], Summary]) -> Summary:
        """Run ``load``; add the CPU the ``roots`` process trees spent meanwhile, per request."""
        with CpuMeter(roots, self.work, self.perf, self.cpus.prefix(self.cpus.load)) as meter:
            summary = load()
        summary.update(meter.figures(int(summary["requests"])))
        return summary

    def _measure(self, name: str, port: int, roots: tuple[int, ...]) -> dict[str, Any]:
        opts, prefix = self.opts, self.cpus.prefix(self.cpus.load)
        if opts.warmup > 0:
            self.progress.step(name, f"warm-up {opts.warmup:g}s")
            self.loadgen.closed(port, PATH, opts.warmup, prefix)
            self.progress.consume(opts.warmup)
        runs: list[Summary] = []
        for i in range(opts.runs):
            self.progress.step(name, f"run {i + 1}/{opts.runs} ({opts.duration:g}s)")
            runs.append(
                self._metered(
                    roots, functools.partial(self.loadgen.closed, port, PATH, opts.duration, prefix)
                )
            )
            self.progress.consume(opts.duration)
            last = runs[-1]
            self.progress.say(
                f"    {last['rps']:,.0f} req/s  p50 {last['p50_ms']:.3f} ms  "
                f"p99 {last['p99_ms']:.3f} ms  non-2xx {last['non2xx']}  "
                f"errors {last['errors']}  {cpu_line(last)}"
            )
        if all(r["requests"] == 0 for r in runs):
            raise HarnessError(f"no request completed against {name}")
        return {
            "name": name,
            "status": "ok",
            "rps": round(statistics.median(r["rps"] for r in runs), 1),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
            "non2xx": sum(r["non2xx"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            **{key: median(r[key] for r in runs) for key in CPU_KEYS},
            "runs": runs,
        }

    def _after(self, name: str, port: int, roots: tuple[int, ...], result: dict[str, Any]) -> None:
        """Measurements that need a scenario's proxy still running (half load on gatekeeper-1)."""
        if name != "gatekeeper-1" or "half-load" not in self.opts.only:
            return
        try:
            self.extras["half-load"] = self._half_load(port, roots, float(result["rps"]))
        except Exception as exc:
            self.progress.say(f"half-load: FAILED {exc}")
            self.extras["half-load"] = {"status": "failed", "reason": str(exc)}

    def _half_load(self, port: int, roots: tuple[int, ...], max_rps: float) -> dict[str, Any]:
        rate = max_rps / 2
        prefix = self.cpus.prefix(self.cpus.load)
        measured: dict[str, Summary] = {}
        targets = (
            ("direct", self.upstream_port, (self.upstream_pid,)),
            ("gatekeeper-1", port, roots),
        )
        for label, target, servers in targets:
            self.progress.step(
                "half-load", f"{label} at {rate:,.0f} req/s ({self.opts.duration:g}s, paced)"
            )
            measured[label] = self._metered(
                servers,
                functools.partial(
                    self.loadgen.paced, target, PATH, self.opts.duration, rate, prefix
                ),
            )
            self.progress.consume(self.opts.duration)
        direct, gk = measured["direct"], measured["gatekeeper-1"]
        return {
            "status": "ok",
            "rate_rps": round(rate, 1),
            "pacing": "built-in paced client (fixed rate, absolute schedule per connection)",
            "added_p50_ms": round(gk["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(gk["p99_ms"] - direct["p99_ms"], 3),
            "direct": direct,
            "gatekeeper": gk,
        }

    # -- the servers ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _upstream(self) -> Iterator[None]:
        self.upstream_port = free_port()
        prefix = self.cpus.prefix(self.cpus.load)
        if self.nginx is not None:
            child = start_nginx_upstream(self.work, prefix, self.upstream_port)
        else:
            child = Child(
                "builtin-upstream",
                [
                    *prefix,
                    *python_module(
                        "benchmarks.builtin_upstream", "--port", str(self.upstream_port)
                    ),
                ],
                self.work,
            )
            wait_port(self.upstream_port, 15.0, child)
        self.upstream_pid = child.proc.pid
        with child:
            yield

    @contextlib.contextmanager
    def _nginx_proxy(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        port = free_port()
        with start_nginx_proxy(
            self.work, self.cpus.prefix(self.cpus.proxy), port, self.upstream_port
        ) as child:
            yield port, (child.proc.pid,)

    @contextlib.contextmanager
    def _naive_proxy(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        port = free_port()
        argv = [
            *self.cpus.prefix(self.cpus.proxy),
            *python_module(
                "benchmarks.naive_proxy",
                "--port",
                str(port),
                "--upstream",
                f"http://127.0.0.1:{self.upstream_port}",
            ),
        ]
        with Child("naive-proxy", argv, self.work) as child:
            wait_port(port, 20.0, child)
            yield port, (child.proc.pid,)

    def _gatekeeper(self, reason: str | None) -> None:
        names = [n for n in (*SCENARIOS[3:], *EXTRAS) if n in self.opts.only]
        if reason is not None or not names:
            for name in names:
                if name in SCENARIOS:
                    self.scenarios[name] = skipped(name, reason or "not selected")
                else:
                    self.extras[name] = {"status": "skipped", "reason": reason}
            return
        self.progress.step("gatekeeper", "starting embedded PostgreSQL + Valkey, migrating")
        stack = GatekeeperStack(self.work)
        try:
            stack.start()
            if self.cpus.pinned:
                stack.pin(self.cpus.load)
            stack.block_all(blocked_ids(self.opts.devices))
            self.progress.consume(8.0)
            for workers in (1, 2):
                name = f"gatekeeper-{workers}"
                self._scenario(name, functools.partial(self._gk_proxy, stack, name, workers))
            self._extra(
                "propagation",
                lambda: propagation.measure(
                    stack,
                    self.upstream_port,
                    self.cpus.prefix(self.cpus.proxy),
                    self.opts.trials,
                    self.progress,
                ),
            )
            self._extra(
                "writebehind",
                lambda: writebehind.measure(
                    stack, self.upstream_port, self.opts.writebehind_seconds, self.progress
                ),
            )
        except Exception as exc:
            self.progress.say(f"gatekeeper: FAILED {exc}")
            for name in names:
                if name in SCENARIOS and name not in self.scenarios:
                    self.scenarios[name] = failed(name, exc)
                elif name in EXTRAS and name not in self.extras:
                    self.extras[name] = {"status": "failed", "reason": str(exc)}
        finally:
            stack.stop()

    @contextlib.contextmanager
    def _gk_proxy(
        self, stack: GatekeeperStack, name: str, workers: int
    ) -> Iterator[tuple[int, tuple[int, ...]]]:
        child, port = stack.start_proxy(
            name, workers, self.upstream_port, self.cpus.prefix(self.cpus.proxy)
        )
        with child:
            yield port, (child.proc.pid,)

    def _extra(self, name: str, measure: Callable[[], dict[str, Any]]) -> None:
        if name not in self.opts.only:
            return
        try:
            self.extras[name] = measure()
        except Exception as exc:
            self.progress.say(f"{name}: FAILED {exc}")
            self.progress.say(traceback.format_exc(limit=3))
            self.extras[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}

    # -- the report -----------------------------------------------------------------------

    def _report(self) -> dict[str, Any]:
        from .report import build_report

        machine = {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "commit": commit(),
            "platform": platform.platform(),
            "implementation": sys.implementation.name,
            "cpu_pinning": self.cpus.describe(),
            "load_generator": self.loadgen.describe(),
            "upstream": "nginx" if self.nginx else "builtin",
        }
        notes = list(self.notes)
        if self.perf.reason is not None:
            notes.append(f"cycles and instructions per request not measured: {self.perf.reason}")
        return build_report(machine, self.opts, self.scenarios, self.extras, notes)
