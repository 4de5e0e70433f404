"""Console devices-page latency and weight on a tenant of 1,000,000 devices.

    python -m benchmarks.console_page [--devices N] [--requests N] [--database-url URL ...]

The same data as :mod:`benchmarks.admin_list` (one ``generate_series`` insert), the real admin
app with its console on a loopback port, a browser-like client signed in through the sign-in
form. Measures p50/p95 of the whole HTML page (the console's loopback call to the API and the
render included) for the first and a deep page of: the plain list, ``blocked=only``, a common
and a rare search; and the page weight (HTML + CSS + JS, before compression).
Targets: p95 <= 300 ms, weight <= 200 KB.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Final

import aiohttp
from aiohttp import web

from admin_api.app import create_app
from admin_api.auth import DEVICE_READ
from benchmarks.admin_list import SCENARIOS, SECRET, TENANT, _deep_cursor, _load, _stores
from gatekeeper.runtime.admin_tokens import mint_token
from gatekeeper.settings import Settings
from gatekeeper.store.clients import open_pg_pool, open_redis
from gatekeeper.store.migrate import migrate

TARGET_MS: Final = 300.0
TARGET_BYTES: Final = 200 * 1024
_ASSETS: Final = ("/console/static/console.css", "/console/static/console.js")


async def _measure(
    session: aiohttp.ClientSession, url: str, params: dict[str, str], requests: int
) -> tuple[float, float, int]:
    timings: list[float] = []
    size = 0
    for _ in range(requests):
        started = time.perf_counter()
        async with session.get(url, params=params, allow_redirects=False) as response:
            body = await response.read()
            assert response.status == 200, body[:200]
        timings.append((time.perf_counter() - started) * 1000)
        size = len(body)
    timings.sort()
    return statistics.median(timings), timings[max(int(len(timings) * 0.95) - 1, 0)], size


async def _sign_in(session: aiohttp.ClientSession, base: str, settings: Settings) -> None:
    token = mint_token(settings, TENANT, [DEVICE_READ], ttl_seconds=3600)
    async with session.post(
        f"{base}/console/sign-in", data={"token": token}, allow_redirects=False
    ) as response:
        assert response.status == 303, await response.text()


async def _assets_bytes(session: aiohttp.ClientSession, base: str) -> int:
    total = 0
    for path in _ASSETS:
        async with session.get(base + path) as response:
            total += len(await response.read())
    return total


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
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            url = f"{base}/console/{TENANT}/devices"
            worst, heaviest = 0.0, 0
            print(f"\n{args.requests} sequential page loads each, {args.devices:,} devices")
            print(f"{'scenario':<24}{'page':<7}{'bytes':>8}{'p50 ms':>9}{'p95 ms':>9}")
            jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
            async with aiohttp.ClientSession(cookie_jar=jar) as session:
                await _sign_in(session, base, settings)
                assets = await _assets_bytes(session, base)
                for name, params in SCENARIOS.items():
                    deep = await _deep_cursor(pool, params)
                    pages = [("first", params)]
                    if deep is not None:
                        pages.append(("deep", {**params, "cursor": deep}))
                    for page, query in pages:
                        await _measure(session, url, query, 5)  # warm up
                        p50, p95, size = await _measure(session, url, query, args.requests)
                        worst, heaviest = max(worst, p95), max(heaviest, size)
                        print(f"{name:<24}{page:<7}{size:>8}{p50:>9.1f}{p95:>9.1f}")
            weight = heaviest + assets
            ok = worst <= TARGET_MS and weight <= TARGET_BYTES
            print(f"\nworst p95: {worst:.1f} ms (target <= {TARGET_MS:.0f} ms)")
            print(f"page weight: {weight:,} bytes = HTML {heaviest:,} + CSS/JS {assets:,}")
            print(f"(target <= {TARGET_BYTES:,}): {'OK' if ok else 'MISSED'}")
            return 0 if ok else 1
        finally:
            await runner.cleanup()
            await redis.aclose()
            await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
