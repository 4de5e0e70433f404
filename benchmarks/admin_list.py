"""Admin device-list latency on a tenant of 1,000,000 devices, through the real HTTP app.

    python -m benchmarks.admin_list [--devices N] [--requests N] [--database-url URL]

Starts an embedded PostgreSQL and Valkey in a temporary folder (unless ``--database-url`` and
``--redis-url`` are given), migrates, loads the devices with one ``generate_series`` insert,
serves :func:`admin_api.app.create_app` on a loopback port and measures, from an HTTP client on
the same machine, p50/p95 of the first page and of a deep page (keyset cursor at the middle of
the result) for: the plain list, ``blocked=only``, a common ``q`` and a rare ``q``.
Target: p95 <= 50 ms. ``--explain`` prints each query plan.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from admin_api.app import create_app
from admin_api.auth import DEVICE_READ
from admin_api.filters import where_clause
from admin_api.listing import ORDER, SELECT_DEVICES, DeviceQuery, page_cursor
from gatekeeper.runtime.admin_tokens import mint_token
from gatekeeper.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from gatekeeper.settings import Settings
from gatekeeper.store.clients import open_pg_pool, open_redis
from gatekeeper.store.migrate import migrate

TENANT = "bench"
SECRET = "benchmark-secret-benchmark-secret-0123456789"
WORDS = (
    "gate",
    "kitchen",
    "tablet",
    "scanner",
    "kiosk",
    "crew",
    "cabin",
    "deck",
    "lounge",
    "hangar",
)

# One statement: ids dev-0000000.., a name for 90% of them ("<word> <n>"), 5% never active,
# 1% blocked; activity spread over 90 days. The devices and their activity rows (0004) are written
# together; the transaction says so (gatekeeper.flush), as the activity flush does.
_LOAD = """
WITH src AS (
    SELECT $1::text AS t, 'dev-' || lpad(i::text, 7, '0') AS d,
           CASE WHEN i % 10 <> 0 THEN ($2::text[])[1 + (i * 7) % 10] || ' ' || i END AS name,
           CASE WHEN i % 20 <> 0 THEN now() - make_interval(secs => (i * 7919) % 7776000) END
               AS last_active,
           i % 100 = 1 AS blocked,
           CASE WHEN i % 100 = 1 THEN now() - make_interval(secs => (i * 104729) % 7776000) END
               AS blocked_at,
           i
    FROM generate_series(0::bigint, $3::bigint - 1) AS i
), devices_added AS (
    INSERT INTO devices (tenant_id, device_id, name, is_blocked, blocked_at)
    SELECT t, d, name, blocked, blocked_at FROM src
)
INSERT INTO device_activity (tenant_id, device_id, last_active_at, is_blocked, blocked_at,
                             application, application_version, os, os_version, manufacturer,
                             model, first_seen_at, attributes_seen_at)
SELECT t, d, last_active, blocked, blocked_at,
       'crewcheck', '2.' || (i % 7), 'android', '1' || (i % 5), 'acme', 'x' || (i % 13),
       now() - interval '100 days', now() - interval '100 days'
FROM src
"""

SCENARIOS: dict[str, dict[str, str]] = {
    "plain": {},
    "blocked=only": {"blocked": "only"},
    "q=kitchen (10%)": {"q": "kitchen"},
    "q=tablet 4242 (rare)": {"q": "tablet 4242"},
}


@contextmanager
def _stores(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if args.database_url and args.redis_url:
        yield args.database_url, args.redis_url
        return
    with tempfile.TemporaryDirectory(prefix="gk-admin-bench-") as folder:
        postgres, redis = EmbeddedPostgres(Path(folder) / "pg"), EmbeddedRedis(Path(folder) / "r")
        postgres.start()
        redis.start()
        try:
            yield postgres.url, redis.url
        finally:
            postgres.stop()
            redis.stop()


async def _load(pool: asyncpg.Pool, devices: int) -> None:
    have = await pool.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", TENANT)
    if have == devices:
        print(f"reusing {have:,} devices of tenant {TENANT!r}")
        return
    await pool.execute("DELETE FROM devices WHERE tenant_id = $1", TENANT)
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL gatekeeper.flush = 'on'")
        await conn.execute(_LOAD, TENANT, list(WORDS), devices, timeout=3600)
    await pool.execute("ANALYZE devices, device_activity", timeout=600)
    print(f"loaded {devices:,} devices in {time.perf_counter() - started:.1f} s")


async def _deep_cursor(pool: asyncpg.Pool, params: dict[str, str]) -> str | None:
    """A cursor at the middle of the scenario's result set (a deep page)."""
    query = DeviceQuery(TENANT, params.get("q"), params.get("blocked", "all"))
    args: list[Any] = [TENANT]
    where = where_clause(query, args)
    total = await pool.fetchval(f"SELECT count(*) FROM ({SELECT_DEVICES} WHERE {where})", *args)
    row = await pool.fetchrow(
        f"{SELECT_DEVICES} WHERE {where} ORDER BY {ORDER} OFFSET {max(total // 2, 0)} LIMIT 1",
        *args,
    )
    return None if row is None else page_cursor(row)


async def _measure(
    session: aiohttp.ClientSession, url: str, params: dict[str, str], requests: int
) -> tuple[float, float, int]:
    timings: list[float] = []
    count = 0
    for _ in range(requests):
        started = time.perf_counter()
        async with session.get(url, params=params) as response:
            body = await response.json()
            assert response.status == 200, body
        timings.append((time.perf_counter() - started) * 1000)
        count = len(body)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1], count


async def _explain(pool: asyncpg.Pool, params: dict[str, str]) -> None:
    args: list[Any] = [TENANT]
    where = where_clause(DeviceQuery(TENANT, params.get("q"), params.get("blocked", "all")), args)
    plan = await pool.fetch(
        f"EXPLAIN (ANALYZE, BUFFERS) {SELECT_DEVICES} WHERE {where} ORDER BY {ORDER} LIMIT 101",
        *args,
    )
    print("\n".join("    " + r[0] for r in plan))


async def run(args: argparse.Namespace) -> int:
    with _stores(args) as (pg_url, redis_url):
        await migrate(pg_url)
        settings = Settings(database_url=pg_url, redis_url=redis_url, jwt_secret=SECRET)
        pool = await open_pg_pool(pg_url, min_size=2, max_size=10)
        redis = open_redis(redis_url)
        runner = web.AppRunner(create_app(settings, pool, redis), access_log=None)
        try:
            await _load(pool, args.devices)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            token = mint_token(settings, TENANT, [DEVICE_READ], ttl_seconds=3600)
            url = f"http://127.0.0.1:{port}/api/{TENANT}/devices"
            worst = 0.0
            print(
                f"\n{args.requests} sequential requests each, limit=100, "
                f"{args.devices:,} devices in the tenant"
            )
            print(f"{'scenario':<24}{'page':<7}{'rows':>5}{'p50 ms':>9}{'p95 ms':>9}")
            async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {token}"}
            ) as session:
                for name, params in SCENARIOS.items():
                    deep = await _deep_cursor(pool, params)
                    pages = [("first", params)]
                    if deep is not None:
                        pages.append(("deep", {**params, "cursor": deep}))
                    for page, query in pages:
                        await _measure(session, url, query, 5)  # warm up
                        p50, p95, rows = await _measure(session, url, query, args.requests)
                        worst = max(worst, p95)
                        print(f"{name:<24}{page:<7}{rows:>5}{p50:>9.1f}{p95:>9.1f}")
                    if args.explain:
                        await _explain(pool, params)
            print(
                f"\nworst p95: {worst:.1f} ms (target <= 50 ms): "
                f"{'OK' if worst <= 50 else 'MISSED'}"
            )
            return 0 if worst <= 50 else 1
        finally:
            await runner.cleanup()
            await redis.aclose()
            await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--explain", action="store_true")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
