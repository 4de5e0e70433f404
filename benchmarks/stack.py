"""The adapter to the gatekeeper itself: embedded stores, migrations, proxy processes, blocks.

Everything the harness needs from ``gatekeeper`` goes through here, so a change of the core's
interface is absorbed in one file. :func:`unavailable` says why the gatekeeper scenarios must be
skipped (for example while the proxy is not written yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .loadclient import device_id
from .procfs import children_by_parent, descendants
from .procs import HOST, Child, HarnessError, free_port, wait_http_ok

__all__ = ["BLOCKED_EVERY", "TENANT", "GatekeeperStack", "blocked_ids", "unavailable"]

TENANT = "bench"
BLOCKED_EVERY = 100  # 1% of the device ids are blocked


def blocked_ids(devices: int) -> list[str]:
    """The device ids blocked for the gatekeeper scenarios (1% of them)."""
    return [device_id(i) for i in range(0, devices, BLOCKED_EVERY)]


def _gatekeeper_command() -> list[str] | None:
    """How to run ``gatekeeper``: $BENCH_GATEKEEPER_CMD (to benchmark another build), else
    ``python -m gatekeeper``, else the console script beside this interpreter."""
    override = os.environ.get("BENCH_GATEKEEPER_CMD")
    if override:
        return shlex.split(override)
    if importlib.util.find_spec("gatekeeper.__main__") is not None:
        return [sys.executable, "-m", "gatekeeper"]
    script = Path(sys.executable).parent / "gatekeeper"
    return [str(script)] if script.exists() else None


def unavailable() -> str | None:
    """None when the gatekeeper proxy can be benchmarked, else the reason it cannot."""
    for module in (
        "gatekeeper.runtime.embedded",
        "gatekeeper.store.migrate",
        "gatekeeper.store.edge_writes",
        "gatekeeper.store.clients",
    ):
        if importlib.util.find_spec(module) is None:
            return f"gatekeeper proxy not available ({module} is missing)"
    command = _gatekeeper_command()
    if command is None:
        return "gatekeeper proxy not available (no `gatekeeper` command / gatekeeper.__main__)"
    try:
        done = subprocess.run(
            [*command, "proxy", "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"gatekeeper proxy not available ({exc})"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"gatekeeper proxy not available (`gatekeeper proxy --help`: {last})"
    return None


class GatekeeperStack:
    """Embedded PostgreSQL + Valkey for the run, migrated; starts and seeds gatekeeper proxies."""

    def __init__(self, work: Path) -> None:
        from gatekeeper.runtime.embedded import EmbeddedPostgres, EmbeddedRedis

        self.work = work
        self._postgres = EmbeddedPostgres(work / "postgres")
        self._redis = EmbeddedRedis(work / "valkey")
        self.database_url = ""
        self.redis_url = ""

    def start(self) -> None:
        from gatekeeper.store.migrate import migrate

        self.database_url = self._postgres.start()
        self.redis_url = self._redis.start()
        asyncio.run(migrate(self.database_url))

    def stop(self) -> None:
        self._redis.stop()
        self._postgres.stop()

    def pin(self, cores: tuple[int, ...]) -> None:
        """Run the stores on ``cores`` (the load side's): in production they are other machines,
        and on two cores Postgres writing the recorder's batches would otherwise preempt the
        proxy under test. Backends Postgres forks later inherit the postmaster's affinity.
        Found from /proc (this process's PostgreSQL and Valkey children and theirs), so any
        build's embedded servers are pinned alike."""
        tree = children_by_parent()
        for child in tree.get(os.getpid(), ()):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"postgres" in argv or b"valkey" in argv:
                for pid in descendants(child, tree):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.sched_setaffinity(pid, cores)

    def env(self) -> dict[str, str]:
        return {
            "GATEKEEPER_DATABASE_URL": self.database_url,
            "GATEKEEPER_REDIS_URL": self.redis_url,
            "GATEKEEPER_LOG_LEVEL": "WARNING",
        }

    def start_proxy(
        self, name: str, workers: int, upstream_port: int, prefix: list[str]
    ) -> tuple[Child, int]:
        """A ``gatekeeper proxy`` with ``workers`` workers; returns it and its proxy port."""
        command = _gatekeeper_command()
        if command is None:
            raise HarnessError("no gatekeeper command")
        port, metrics = free_port(), free_port()
        argv = [
            *prefix,
            *command,
            "proxy",
            "--workers",
            str(workers),
            "--upstream",
            f"http://{HOST}:{upstream_port}",
            "--proxy-port",
            str(port),
            "--metrics-port",
            str(metrics),
            "--host",
            HOST,
        ]
        child = Child(name, argv, self.work, env=self.env())
        try:
            wait_http_ok(f"http://{HOST}:{metrics}/readyz", 60.0, child)
        except BaseException:
            child.stop()
            raise
        return child, port

    async def open_stores(self) -> tuple[Any, Any]:
        """An asyncpg pool and a redis client on the run's stores (close them when done)."""
        from gatekeeper.store.clients import open_pg_pool, open_redis

        pool = await open_pg_pool(self.database_url, min_size=1, max_size=4)
        return pool, open_redis(self.redis_url)

    async def set_blocked(self, pool: Any, redis: Any, device: str, blocked: bool) -> None:
        """Block or unblock one device through the store (Postgres, then Redis + publish)."""
        from gatekeeper.store.edge_writes import set_blocked

        await set_blocked(pool, redis, TENANT, device, blocked, "benchmark", create=True)

    def block_all(self, devices: Iterable[str]) -> None:
        """Block ``devices`` before a proxy starts, so its mirror loads them."""

        async def run() -> None:
            pool, redis = await self.open_stores()
            try:
                for device in devices:
                    await self.set_blocked(pool, redis, device, True)
            finally:
                await redis.aclose()
                await pool.close()

        asyncio.run(run())
