"""``python -m benchmarks soak``: steady mixed traffic for a bounded time; does memory plateau?

The stack is started the way the proxy benchmark starts it (embedded PostgreSQL and Valkey,
``gatekeeper proxy --workers N``, the built-in upstream, optionally ``gatekeeper admin``), all
on 127.0.0.1. A load client in its own process (this module run as ``python -m
benchmarks.soak --port …``) sends paced mixed traffic: a pool of devices plus new ones arriving,
a few blocked ones, keep-alive and one-request connections, some POST bodies, app upgrades.
Every few seconds the harness reads, from ``/proc`` only, the RSS, open descriptors and TCP
sockets of every gatekeeper process, plus the client's counts and the proxy's ``/metrics``.
This module only measures; :mod:`benchmarks.reliability` judges the samples (the verdict and its
rule) and writes them out, so the judgement is in one place for the soak and for the report.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import secrets
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httptools
import uvloop

from .loadclient import Connection, device_id, open_connection
from .procs import HOST, Child, HarnessError, free_port, python_module, wait_http_ok, wait_port
from .progress import Progress
from .stack import TENANT, GatekeeperStack

__all__ = ["MAX_MINUTES", "SoakOptions", "run_soak"]

MAX_MINUTES = 60.0  # a soak that forgets to stop must not hold a shared machine for an evening
BLOCKED_EVERY = 250  # 0.4% of the pool is blocked for the whole run
CHURN = tuple(device_id(i) for i in (1, 2, 3, 4))  # blocked and unblocked by the admin API
PATH = f"/api/{TENANT}/soak"


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


# -- the load client (runs in its own process) ---------------------------------------------------


class _Mix:
    """Which request comes next: the pool in a fixed shuffled order, new devices on a schedule.

    Each pool device comes once per pass over the pool, so the whole pool is seen within
    ``devices / rate`` seconds: memory that grows after that is not first sightings.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.devices = args.devices
        self.new_per_second = args.new_per_second
        self.post_share = args.post_share
        self.duration = args.duration
        self.new_sent = 0
        self.order = list(range(args.devices))
        random.Random(0).shuffle(self.order)
        self.served = 0

    def next(self, rng: random.Random, elapsed: float) -> tuple[bytes, bool]:
        """The request bytes and whether the device is one of the always-blocked ones."""
        if self.new_sent < elapsed * self.new_per_second:
            self.new_sent += 1
            device, index = f"soak-new-{self.new_sent:06d}", -1
        else:
            index = self.order[self.served % self.devices]
            self.served += 1
            device = device_id(index)
        # A quarter of the pool upgrades its app once, at a time spread over the run, so history
        # records keep being written; nobody downgrades (that would be churn, not a fleet).
        upgraded = index % 4 == 0 and (index * 7919 % 1000) / 1000 < elapsed / self.duration
        head = (f"X-Device-Id: {device}\r\nX-App-Name: soak-app\r\n"
                f"X-App-Version: {'1.1.0' if upgraded else '1.0.0'}\r\nX-OS-Name: Linux\r\n"
                f"X-OS-Version: 6.1\r\nX-Device-Manufacturer: Soak\r\nX-Device-Model: S-1\r\n")
        if rng.random() < self.post_share:
            body = json.dumps({"readings": [rng.random() for _ in range(40)]}).encode()
            raw = (f"POST {PATH}/upload HTTP/1.1\r\nHost: {HOST}\r\n{head}"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
        else:
            raw = (f"GET {PATH}/items?n={rng.randrange(100)} HTTP/1.1\r\nHost: {HOST}\r\n"
                   f"{head}\r\n").encode()
        return raw, index >= 0 and index % BLOCKED_EVERY == 0


def _bucket(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    return "denied" if status == 403 else f"status_{status}"


async def _lane(lane: int, fresh: bool, args: argparse.Namespace, mix: _Mix,
                counts: collections.Counter[str], started: float) -> None:
    """One connection slot on an absolute schedule; ``fresh`` opens a connection per request."""
    loop = asyncio.get_running_loop()
    rng = random.Random(lane)
    interval = args.connections / args.rate
    next_at = started + interval * lane / args.connections
    budget = int(args.rate * args.duration)
    conn: Connection | None = None
    while loop.time() < started + args.duration and counts["sent"] < budget:
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at += interval
        raw, blocked = mix.next(rng, loop.time() - started)
        counts["sent"] += 1
        if conn is not None and conn.closed.done():
            counts["server_closed"] += 1  # the proxy ended a keep-alive connection; reconnect
            conn = None
        try:
            if conn is None:
                conn = await open_connection(args.port)
                counts["connects"] += 1
            status = await asyncio.wait_for(conn.send(raw), 10.0)
        # RuntimeError: uvloop refuses a write on a transport the server closed meanwhile.
        except (OSError, RuntimeError, TimeoutError, httptools.HttpParserError):
            counts["errors"] += 1
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            conn = None
            continue
        counts[_bucket(status)] += 1
        counts["blocked_sent"] += blocked
        counts["blocked_forwarded"] += blocked and 200 <= status < 300
        if fresh and conn.transport is not None:
            conn.transport.close()
            conn = None
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def _client(args: argparse.Namespace) -> None:
    """Print cumulative counts as one JSON line a second; the last line has ``"done": true``."""
    loop = asyncio.get_running_loop()
    counts: collections.Counter[str] = collections.Counter()
    mix = _Mix(args)
    started = loop.time()
    keep = args.connections - args.fresh_connections
    lanes = [asyncio.create_task(_lane(i, i >= keep, args, mix, counts, started))
             for i in range(args.connections)]
    waiter = asyncio.gather(*lanes)
    while not waiter.done():
        await asyncio.wait([waiter], timeout=1.0)
        line = {"t": round(loop.time() - started, 2), "new_devices": mix.new_sent, **counts}
        print(json.dumps(line | {"done": waiter.done()}), flush=True)
    waiter.result()


def client_main() -> None:
    parser = argparse.ArgumentParser(description="the soak's load client (internal)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--new-per-second", type=float, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--fresh-connections", type=int, required=True)
    parser.add_argument("--post-share", type=float, required=True)
    uvloop.run(_client(parser.parse_args()))


# -- what /proc says about a process tree --------------------------------------------------------

_TCP_STATES = {"01": "established", "08": "close_wait", "0A": "listen"}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text()
                # The command name may hold spaces and parentheses: split after the last ')'.
                tree[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    return tree


def _tree(root: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, ()))
    return sorted(found)


def _tcp_table() -> tuple[dict[str, tuple[str, int, int]], int]:
    """Socket inode -> (state, local port, remote port), and the TIME_WAIT count.

    TIME_WAIT entries belong to no process any more (their inode is 0), so they are only counted.
    """
    table: dict[str, tuple[str, int, int]] = {}
    time_wait = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                time_wait += fields[3] == "06"
                table[fields[9]] = (_TCP_STATES.get(fields[3], "other"),
                                    int(fields[1].rsplit(":", 1)[1], 16),
                                    int(fields[2].rsplit(":", 1)[1], 16))
    return table, time_wait


def _process(pid: int, tcp: dict[str, tuple[str, int, int]],
             peers: dict[int, str]) -> dict[str, Any] | None:
    """RSS, descriptors and TCP sockets of one process; established ones named by the port of
    the server they talk to (``peers``), so a growing pool shows which pool it is."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # the process exited between the listing and the read
        return None
    links = []
    for fd in fds:
        with contextlib.suppress(OSError):  # closed since the listing: no longer open
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    kb = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+) kB", status, re.M))
    sockets = [tcp[link[8:-1]] for link in links
               if link.startswith("socket:[") and link[8:-1] in tcp]
    states = collections.Counter(state for state, _, _ in sockets)
    by_peer = collections.Counter(peers.get(local) or peers.get(remote) or "other"
                                  for state, local, remote in sockets if state == "established")
    return {"pid": pid, "rss_kb": int(kb.get("VmRSS", 0)), "anon_kb": int(kb.get("RssAnon", 0)),
            "fds": len(links), "tcp": len(sockets), "tcp_states": dict(sorted(states.items())),
            "tcp_peers": dict(sorted(by_peer.items()))}


def _scrape(port: int) -> dict[str, float]:
    """The few ``/metrics`` figures the soak reports (absent ones are left out)."""
    wanted = {"gatekeeper_activity_pending": "pending",
              "gatekeeper_activity_dropped_total": "dropped",
              "gatekeeper_activity_flush_errors_total": "flush_errors",
              "gatekeeper_activity_flushed_total": "flushed"}
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
            role = "worker" if "gatekeeper.worker" in cmdline else (
                "recorder" if "recorder" in cmdline else "child")
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
            upstream = stack.enter_context(Child("soak-upstream", python_module(
                "benchmarks.builtin_upstream", "--port", str(upstream_port)), self.work))
            wait_port(upstream_port, 15.0, upstream)
            proxy, port = gk.start_proxy("soak-proxy", opts.workers, upstream_port, [])
            stack.enter_context(proxy)
            # start_proxy picks the metrics port and the gatekeeper command itself (honouring
            # BENCH_GATEKEEPER_CMD); the proxy's command line is where both are kept.
            metrics_port = int(proxy.argv[proxy.argv.index("--metrics-port") + 1])
            command = proxy.argv[:proxy.argv.index("proxy")]
            roots = {"supervisor" if opts.workers > 1 else "proxy": proxy.proc.pid}
            if opts.admin:
                roots["admin"] = stack.enter_context(self._start_admin(gk, command)).proc.pid
            client = stack.enter_context(Child("soak-client", self._client_argv(port), self.work))
            self._peers = {port: "clients", upstream_port: "upstream", metrics_port: "metrics",
                           self._admin_port: "clients", _port_of(gk.database_url): "postgres",
                           _port_of(gk.redis_url): "redis"}
            self._sample_until_done(client, roles=_Roles(roots), metrics_port=metrics_port)
        return self._result()

    def _client_argv(self, port: int) -> list[str]:
        o = self.opts
        return python_module(
            "benchmarks.soak", "--port", str(port), "--duration", str(o.seconds),
            "--rate", str(o.rate), "--devices", str(o.devices),
            "--new-per-second", str(o.new_per_second), "--connections", str(o.connections),
            "--fresh-connections", str(o.fresh_connections), "--post-share", str(o.post_share))

    @contextlib.contextmanager
    def _start_admin(self, gk: GatekeeperStack, command: list[str]) -> Iterator[Child]:
        from gatekeeper.admin_tokens import mint_token
        from gatekeeper.settings import Settings

        secret = secrets.token_urlsafe(32)
        self._admin_port = free_port()
        env = gk.env() | {"GATEKEEPER_JWT_SECRET": secret}
        with Child("soak-admin", [*command, "admin", "--admin-port", str(self._admin_port),
                                  "--host", HOST], self.work, env=env) as child:
            wait_http_ok(f"http://{HOST}:{self._admin_port}/readyz", 60.0, child)
            self._token = mint_token(Settings(jwt_secret=secret), TENANT,
                                     ["Device.Read", "Device.Write"], ttl_seconds=7200)
            yield child

    def _admin_tick(self, tick: int) -> None:
        """One block or unblock (which the edge must see) and one list, through the admin API."""
        device = CHURN[tick % len(CHURN)]
        action = "unblock" if device in self._churn_blocked else "block"
        base = f"http://{HOST}:{self._admin_port}/api/{TENANT}/devices"
        for method, url in (("POST", f"{base}/{device}/{action}"),
                            ("GET", f"{base}?blocked=only&limit=20")):
            request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST"
                                             else None, headers={
                "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
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
            at = started + tick * self.opts.interval - jitter.random() * min(
                0.5, self.opts.interval / 2)
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

    def _sample(self, t: float, roles: _Roles, metrics_port: int,
                client: dict[str, Any]) -> None:
        (tcp, time_wait), tree = _tcp_table(), _children()
        processes: dict[str, dict[str, Any]] = {}
        for root in roles.roots:
            for pid in _tree(root, tree):
                if (found := _process(pid, tcp, self._peers)) is not None:
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
            "t": round(t, 1), "rps": round(sent / seconds, 1) if seconds > 0 else 0.0,
            "client": client, "metrics": metrics,
            "load": not client.get("done", False), "time_wait": time_wait,
            "processes": dict(sorted(processes.items()))}
        self.samples.append(sample)
        rss = " ".join(f"{n} {p['rss_kb'] / 1024:.1f}" for n, p in processes.items())
        self.progress.step("soak", f"t={t:.0f}s {sample['rps']:.0f} req/s, RSS MiB: {rss}")

    def _result(self) -> dict[str, Any]:
        final = self.samples[-1]["client"] if self.samples else {}
        return {
            "machine": {"cpus": len(os.sched_getaffinity(0))},
            "options": asdict(self.opts), "finished_at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "client": final, "admin_statuses": dict(sorted(self.admin_statuses.items())),
            "samples": self.samples,
        }


def run_soak(options: SoakOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run one soak and return its result (what ``soak-latest.json`` holds)."""
    with tempfile.TemporaryDirectory(prefix="gatekeeper-soak-") as work:
        return _Soak(options, Path(work), progress or Progress(quiet=True)).run()


if __name__ == "__main__":
    client_main()
