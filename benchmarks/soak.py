"""``python -m benchmarks soak``: steady mixed traffic for a bounded time; does memory plateau?

The stack is started the way the proxy benchmark starts it (embedded PostgreSQL and Valkey,
``gatekeeper proxy --workers N``, the built-in upstream, optionally ``gatekeeper admin``), all
on 127.0.0.1. A load client in its own process (:mod:`benchmarks.soakclient`) sends paced mixed
traffic: a pool of devices plus new ones arriving, a few blocked ones, keep-alive and
one-request connections, some POST bodies, app upgrades. Every few seconds the harness reads,
from ``/proc`` only (:mod:`benchmarks.procfs`), the RSS, open descriptors and TCP sockets of
every gatekeeper process, plus the client's counts and the proxy's ``/metrics``. This module
only measures; :mod:`benchmarks.soakverdict` judges the samples (the verdict and its rule) and
writes them out, so the judgement is in one place for the soak and for the report.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import secrets
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .loadclient import device_id
from .procfs import children_by_parent, descendants, process_figures, tcp_table
from .procs import HOST, Child, HarnessError, free_port, python_module, wait_http_ok, wait_port
from .progress import Progress
from .soakclient import BLOCKED_EVERY
from .stack import TENANT, GatekeeperStack

__all__ = ["MAX_MINUTES", "SoakOptions", "run_soak"]

MAX_MINUTES = 60.0  # a soak that forgets to stop must not hold a shared machine for an evening
CHURN = tuple(device_id(i) for i in (1, 2, 3, 4))  # blocked and unblocked by the admin API


@dataclass(frozen=True, slots=True)
class SoakOptions:
    """How long, how much and what; see ``python -m benchmarks soak --help``."""

    seconds: float
    interval: float = 5.0
    rate: float = 600.0
    devices: int = 5_000
    new_per_second: float = 2.0
    connections: int = 24
    fresh_connections: int = 4
    post_share: float = 0.1
    workers: int = 2
    admin: bool = True


def _scrape(port: int) -> dict[str, float]:
    """The few ``/metrics`` figures the soak reports (absent ones are left out)."""
    wanted = {
        "gatekeeper_activity_pending": "pending",
        "gatekeeper_activity_dropped_total": "dropped",
        "gatekeeper_activity_flush_errors_total": "flush_errors",
        "gatekeeper_activity_flushed_total": "flushed",
    }
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            match = re.match(r"^(\w+)(?:\{([^}]*)\})?\s+(\S+)$", line)
            if match is None:
                continue
            name, labels, value = match.groups()
            if name in wanted:
                out[wanted[name]] = out.get(wanted[name], 0.0) + float(value)
            elif name == "gatekeeper_requests_total" and labels:
                outcome = labels.split('"')[1]
                out[f"outcome_{outcome}"] = float(value)
    return out


def _last_json(path: Path) -> dict[str, Any]:
    """The client's latest complete status line (it appends one a second)."""
    with contextlib.suppress(OSError):
        for line in reversed(path.read_text().splitlines()):
            with contextlib.suppress(json.JSONDecodeError):
                found: dict[str, Any] = json.loads(line)
                return found
    return {}


def _port_of(url: str) -> int:
    return urllib.parse.urlsplit(url).port or 0


# -- the run -------------------------------------------------------------------------------------


class _Roles:
    """Stable names for pids: the first pid of each role keeps its name for the whole run."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = tuple(roots.values())
        self._names = {pid: role for role, pid in roots.items()}
        self._seen = collections.Counter[str]()

    def name(self, pid: int) -> str:
        if pid not in self._names:
            cmdline = ""
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            role = (
                "worker"
                if "gatekeeper.runtime.worker" in cmdline
                else ("recorder" if "recorder" in cmdline else "child")
            )
            self._seen[role] += 1
            self._names[pid] = f"{role}-{self._seen[role]}"
        return self._names[pid]


class _Soak:
    def __init__(self, options: SoakOptions, work: Path, progress: Progress) -> None:
        self.opts = options
        self.work = work
        self.progress = progress
        self.samples: list[dict[str, Any]] = []
        self.admin_statuses: collections.Counter[str] = collections.Counter()
        self._token = ""
        self._admin_port = 0
        self._churn_blocked: set[str] = set()
        self._peers: dict[int, str] = {}

    def run(self) -> dict[str, Any]:
        opts = self.opts
        with contextlib.ExitStack() as stack:
            self.progress.step("soak", "starting embedded PostgreSQL + Valkey, migrating")
            gk = GatekeeperStack(self.work)
            stack.callback(gk.stop)
            gk.start()
            # The churn devices start blocked so they exist for the admin API to toggle.
            gk.block_all([*(device_id(i) for i in range(0, opts.devices, BLOCKED_EVERY)), *CHURN])
            self._churn_blocked = set(CHURN)
            upstream_port = free_port()
            upstream = stack.enter_context(
                Child(
                    "soak-upstream",
                    python_module("benchmarks.builtin_upstream", "--port", str(upstream_port)),
                    self.work,
                )
            )
            wait_port(upstream_port, 15.0, upstream)
            proxy, port = gk.start_proxy("soak-proxy", opts.workers, upstream_port, [])
            stack.enter_context(proxy)
            # start_proxy picks the metrics port and the gatekeeper command itself (honouring
            # BENCH_GATEKEEPER_CMD); the proxy's command line is where both are kept.
            metrics_port = int(proxy.argv[proxy.argv.index("--metrics-port") + 1])
            command = proxy.argv[: proxy.argv.index("proxy")]
            roots = {"supervisor" if opts.workers > 1 else "proxy": proxy.proc.pid}
            if opts.admin:
                roots["admin"] = stack.enter_context(self._start_admin(gk, command)).proc.pid
            client = stack.enter_context(Child("soak-client", self._client_argv(port), self.work))
            self._peers = {
                port: "clients",
                upstream_port: "upstream",
                metrics_port: "metrics",
                self._admin_port: "clients",
                _port_of(gk.database_url): "postgres",
                _port_of(gk.redis_url): "redis",
            }
            self._sample_until_done(client, roles=_Roles(roots), metrics_port=metrics_port)
        return self._result()

    def _client_argv(self, port: int) -> list[str]:
        o = self.opts
        return python_module(
            "benchmarks.soakclient",
            "--port",
            str(port),
            "--duration",
            str(o.seconds),
            "--rate",
            str(o.rate),
            "--devices",
            str(o.devices),
            "--new-per-second",
            str(o.new_per_second),
            "--connections",
            str(o.connections),
            "--fresh-connections",
            str(o.fresh_connections),
            "--post-share",
            str(o.post_share),
        )

    @contextlib.contextmanager
    def _start_admin(self, gk: GatekeeperStack, command: list[str]) -> Iterator[Child]:
        from gatekeeper.runtime.admin_tokens import mint_token
        from gatekeeper.settings import Settings

        secret = secrets.token_urlsafe(32)
        self._admin_port = free_port()
        env = gk.env() | {"GATEKEEPER_JWT_SECRET": secret}
        with Child(
            "soak-admin",
            [*command, "admin", "--admin-port", str(self._admin_port), "--host", HOST],
            self.work,
            env=env,
        ) as child:
            wait_http_ok(f"http://{HOST}:{self._admin_port}/readyz", 60.0, child)
            self._token = mint_token(
                Settings(jwt_secret=secret),
                TENANT,
                ["Device.Read", "Device.Write"],
                ttl_seconds=7200,
            )
            yield child

    def _admin_tick(self, tick: int) -> None:
        """One block or unblock (which the edge must see) and one list, through the admin API."""
        device = CHURN[tick % len(CHURN)]
        action = "unblock" if device in self._churn_blocked else "block"
        base = f"http://{HOST}:{self._admin_port}/api/{TENANT}/devices"
        for method, url in (
            ("POST", f"{base}/{device}/{action}"),
            ("GET", f"{base}?blocked=only&limit=20"),
        ):
            request = urllib.request.Request(
                url,
                method=method,
                data=b"{}" if method == "POST" else None,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Content-Type": "application/json",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    self.admin_statuses[str(resp.status)] += 1
            except urllib.error.HTTPError as exc:
                self.admin_statuses[str(exc.code)] += 1
                continue
            except OSError:
                self.admin_statuses["error"] += 1
                continue
            if method == "POST":
                self._churn_blocked ^= {device}

    def _sample_until_done(self, client: Child, roles: _Roles, metrics_port: int) -> None:
        """Sample every interval until the client's last line says done (one sample after)."""
        self.progress.plan(self.opts.seconds)
        started = time.monotonic()
        tick = 0
        # The proxy's gauges and flushes run on 0.25 s and 0.5 s timers; samples on a whole
        # interval would lock to one phase of them (activity pending read 0 for a whole run).
        jitter = random.Random(0)
        while True:
            tick += 1
            at = (
                started
                + tick * self.opts.interval
                - jitter.random() * min(0.5, self.opts.interval / 2)
            )
            with contextlib.suppress(ValueError):
                time.sleep(at - time.monotonic())
            status = _last_json(client.log_path)
            self._sample(time.monotonic() - started, roles, metrics_port, status)
            if self.opts.admin:  # after the sample: the scrape should not see its aftermath
                self._admin_tick(tick)
            self.progress.consume(self.opts.interval)
            if status.get("done"):
                break
            # Read again: the client may have written "done" just after the read above.
            if client.proc.poll() is not None and not _last_json(client.log_path).get("done"):
                raise HarnessError(f"the load client failed:\n{client.tail()}")
            if time.monotonic() - started > self.opts.seconds + 30:
                raise HarnessError(f"the load client did not finish:\n{client.tail()}")
        client.proc.wait(10)

    def _sample(self, t: float, roles: _Roles, metrics_port: int, client: dict[str, Any]) -> None:
        (tcp, time_wait), tree = tcp_table(), children_by_parent()
        processes: dict[str, dict[str, Any]] = {}
        for root in roles.roots:
            for pid in descendants(root, tree):
                if (found := process_figures(pid, tcp, self._peers)) is not None:
                    processes[roles.name(pid)] = found
        try:
            metrics = _scrape(metrics_port)
        except OSError as exc:
            metrics = {"scrape_error": 1.0}
            self.progress.say(f"soak: /metrics failed: {exc}")
        # The rate comes from the client's own clock: its status line may be up to 1 s old.
        before: dict[str, Any] = self.samples[-1]["client"] if self.samples else {}
        sent = client.get("sent", 0) - before.get("sent", 0)
        seconds = client.get("t", 0.0) - before.get("t", 0.0)
        sample: dict[str, Any] = {
            "t": round(t, 1),
            "rps": round(sent / seconds, 1) if seconds > 0 else 0.0,
            "client": client,
            "metrics": metrics,
            "load": not client.get("done", False),
            "time_wait": time_wait,
            "processes": dict(sorted(processes.items())),
        }
        self.samples.append(sample)
        rss = " ".join(f"{n} {p['rss_kb'] / 1024:.1f}" for n, p in processes.items())
        self.progress.step("soak", f"t={t:.0f}s {sample['rps']:.0f} req/s, RSS MiB: {rss}")

    def _result(self) -> dict[str, Any]:
        final = self.samples[-1]["client"] if self.samples else {}
        return {
            "machine": {"cpus": len(os.sched_getaffinity(0))},
            "options": asdict(self.opts),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "client": final,
            "admin_statuses": dict(sorted(self.admin_statuses.items())),
            "samples": self.samples,
        }


def run_soak(options: SoakOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run one soak and return its result (what ``soak-latest.json`` holds)."""
    with tempfile.TemporaryDirectory(prefix="gatekeeper-soak-") as work:
        return _Soak(options, Path(work), progress or Progress(quiet=True)).run()
