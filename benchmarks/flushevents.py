"""What the outbox events cost the recorder's flush on a flood of new devices (issue 14).

    python -m benchmarks flushevents [--devices 100000] [--rounds 6] [--batch 5000]

Starts an embedded PostgreSQL in a temporary folder (durable, as the harness runs it) and, round
after round, writes ``--devices`` new devices with :class:`PostgresWriter` (two connections, as
the recorder process runs it) in batches of ``--batch``, into a freshly migrated database of its
own: once with the flush's phase-1 statement as shipped (``INSERT_NEW``, which writes one
``device.registered`` per device into ``event_outbox``) and once with the same statement without
the outbox insert (``INSERT_NEW_NO_EVENTS``). The two variants alternate within the run (with,
without, without, with, ...), so drift of a shared machine falls on both alike. Reports each
variant's rounds and median, and the ratio of the medians, for the flush's wall time and for
the CPU time of the whole Postgres server over it (which a busy, shared machine distorts less:
see ``benchmarks.flushcpu``). Each round checks its outbox: one event per device with events,
none without.

``--setup-sql`` runs a statement in each round's database after migrating it (both variants), to
measure a schema idea without a migration, e.g. ``--setup-sql "DROP INDEX event_outbox_tenant"``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.flushcpu import server_cpu
from gatekeeper.edge.activity import sql, statements
from gatekeeper.edge.activity.pending import PendingDevice
from gatekeeper.edge.activity.writer import PostgresWriter
from gatekeeper.runtime.embedded import EmbeddedPostgres
from gatekeeper.store.migrate import migrate
from gatekeeper.types import DeviceKey

__all__ = ["add_arguments", "run"]

_ATTRIBUTES = ("App", "1.0", "Android", "14", "Acme", "X1")
_VARIANTS = {"with events": statements.INSERT_NEW, "without": statements.INSERT_NEW_NO_EVENTS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=100_000, help="new devices per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per variant (default 6)")
    parser.add_argument("--batch", type=int, default=5_000, help="devices per writer batch")
    parser.add_argument("--connections", type=int, default=2, help="writer connections")
    parser.add_argument("--setup-sql", help="a statement run after migrating each round's database")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--quiet", action="store_true", help="no line per round")


@contextlib.contextmanager
def _phase_one(statement: str) -> Iterator[None]:
    """The flush's phase-1 statement swapped for ``statement`` while the round runs."""
    names = vars(sql)  # the module's globals: where write_batch looks the statement up
    names["INSERT_NEW"] = statement
    try:
        yield
    finally:
        names["INSERT_NEW"] = statements.INSERT_NEW


async def _round(
    postgres: EmbeddedPostgres, args: argparse.Namespace, statement: str, n: int
) -> tuple[float, float, int]:
    """Seconds to flush the flood into a fresh database, Postgres's CPU seconds meanwhile, and
    the events it left."""
    admin = await asyncpg.connect(postgres.url)
    name = f"flushevents_{n}_{time.monotonic_ns()}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(url)
        pool = await asyncpg.create_pool(url, min_size=args.connections, max_size=args.connections)
        try:
            if args.setup_sql:
                await pool.execute(args.setup_sql)
            await pool.execute("CHECKPOINT")  # the migration's writes are not the flush's
            writer = PostgresWriter(pool, connections=args.connections)
            keys: list[DeviceKey] = [("bench", f"flood{i:07d}") for i in range(args.devices)]
            t0 = time.time()
            batches = [
                {
                    key: PendingDevice(_ATTRIBUTES, t0, False, True)
                    for key in keys[i : i + args.batch]
                }
                for i in range(0, len(keys), args.batch)
            ]
            postmaster = int(
                (postgres.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0]
            )
            with _phase_one(statement):
                cpu, started = server_cpu(postmaster), time.perf_counter()
                for batch in batches:
                    await writer.write(batch, {})
                elapsed = time.perf_counter() - started
                cpu = server_cpu(postmaster) - cpu
            events = await pool.fetchval("SELECT count(*) FROM event_outbox")
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return elapsed, cpu, int(events)


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    rounds: dict[str, list[float]] = {name: [] for name in _VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in _VARIANTS}
    names = list(_VARIANTS)
    with tempfile.TemporaryDirectory(prefix="gk-flushevents-") as folder:
        postgres = EmbeddedPostgres(Path(folder) / "pg")
        postgres.start()
        try:
            for n in range(args.rounds):
                # with, without, then without, with: neither variant always goes first.
                for name in names if n % 2 == 0 else names[::-1]:
                    elapsed, used, events = await _round(postgres, args, _VARIANTS[name], n)
                    expected = args.devices if name == "with events" else 0
                    if events != expected:
                        raise SystemExit(f"{name}: {events} events in the outbox, not {expected}")
                    rounds[name].append(elapsed)
                    cpu[name].append(used)
                    if not args.quiet:
                        print(
                            f"round {n + 1} {name:<12} {elapsed:7.3f} s, Postgres CPU {used:.2f} s",
                            flush=True,
                        )
        finally:
            postgres.stop()
    medians = {name: statistics.median(times) for name, times in rounds.items()}
    cpu_medians = {name: statistics.median(times) for name, times in cpu.items()}
    return {
        "devices": args.devices,
        "batch": args.batch,
        "connections": args.connections,
        "setup_sql": args.setup_sql,
        "rounds": rounds,
        "median_s": medians,
        "devices_per_s": {name: args.devices / m for name, m in medians.items()},
        "ratio": medians["with events"] / medians["without"],
        "postgres_cpu_s": cpu,
        "postgres_cpu_median_s": cpu_medians,
        # None when a tiny flood used less CPU than the clock's tick can show.
        "cpu_ratio": (
            cpu_medians["with events"] / cpu_medians["without"]
            if cpu_medians["without"] > 0
            else None
        ),
    }


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(_measure(args))
    print(f"{'variant':<14}{'median':>9}{'devices/s':>11}  rounds (s)")
    for name, times in result["rounds"].items():
        print(
            f"{name:<14}{result['median_s'][name]:8.3f}s{result['devices_per_s'][name]:>11,.0f}  "
            + " ".join(f"{t:.3f}" for t in times)
        )
    for name, times in result["postgres_cpu_s"].items():
        print(
            f"{name:<14}{result['postgres_cpu_median_s'][name]:8.3f}s Postgres CPU  "
            + " ".join(f"{t:.2f}" for t in times)
        )
    print(
        f"with/without, flush time:   {result['ratio']:.3f} ({(result['ratio'] - 1) * 100:+.1f} %)"
    )
    cpu = result["cpu_ratio"]
    if cpu is not None:
        print(f"with/without, Postgres CPU: {cpu:.3f} ({(cpu - 1) * 100:+.1f} %)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
