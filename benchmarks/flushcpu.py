"""CPU per flushed device of the write-behind: the flushing process and the whole Postgres server.

    python -m benchmarks.flushcpu [--runs 3] [--seconds 3]

Starts an embedded, durable PostgreSQL in a temporary folder (as the harness does), then, for each
run, migrates a fresh database, measures :func:`benchmarks.writebehind.touch_rate` (known-device
touches) and :func:`benchmarks.recorder_adapter.flush_rate` (new devices) in it, and drops it.
Beside each rate it reports this process's CPU time (``time.process_time``: recording and
flushing) and the CPU time of every Postgres process (the postmaster's children, live or exited:
backends, WAL writer, autovacuum...) over the measurement, per device written. CPU time is what a
busy machine does not distort much, where a rate on a shared 2-core VM moves by a third between
runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import recorder_adapter, writebehind
from gatekeeper.runtime.embedded import EmbeddedPostgres
from gatekeeper.store.migrate import migrate

_TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(postmaster: int) -> float:
    """Seconds of CPU of the postmaster, its live children and the children it has reaped."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


async def _measure(
    postgres: EmbeddedPostgres, run: Callable[[str], Awaitable[dict[str, Any]]], count: str
) -> tuple[float, float, float]:
    """(rate, µs of this process, µs of Postgres) per device, in a database made for it."""
    admin = await asyncpg.connect(postgres.url)
    name = f"flushcpu_{time.monotonic_ns()}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(url)
        postmaster = int((postgres.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        own, server = time.process_time(), server_cpu(postmaster)
        result = await run(url)
        own, server = time.process_time() - own, server_cpu(postmaster) - server
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    # The touch figure's window includes writing its devices once first: they count too.
    devices = result[count] + result.get("touch_devices", 0)
    rate = result["touches_per_s"] if count == "touches_flushed" else result["devices_per_s"]
    return float(rate), 1e6 * own / devices, 1e6 * server / devices


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="gk-flushcpu-") as folder:
        postgres = EmbeddedPostgres(Path(folder) / "pg")
        postgres.start()
        try:
            print(f"{'run':<5}{'figure':<10}{'per s':>10}{'process µs':>12}{'postgres µs':>13}")
            for n in range(1, args.runs + 1):
                for label, run, count in (
                    (
                        "touches",
                        lambda u: writebehind.touch_rate(u, args.seconds),
                        "touches_flushed",
                    ),
                    (
                        "new",
                        lambda u: recorder_adapter.flush_rate(u, args.seconds),
                        "devices_flushed",
                    ),
                ):
                    rate, own, server = await _measure(postgres, run, count)
                    print(f"{n:<5}{label:<10}{rate:>10,.0f}{own:>12.2f}{server:>13.2f}")
        finally:
            postgres.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
