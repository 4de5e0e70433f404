"""``python -m benchmarks.webhook_dispatch``: how fast the webhook dispatcher drains a backlog.

Starts a throwaway embedded PostgreSQL (unless ``--database-url`` is given), migrates, creates
``--webhooks`` webhooks of one tenant aimed at one receiver on loopback (answers 204 at once),
writes ``--events`` outbox events over ``--devices`` devices with one ``generate_series`` insert,
then runs ``--dispatchers`` dispatchers (each with a pool of its own, as replicas would) until
every delivery is done. Prints the time to fan out and to deliver, and deliveries per second.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from aiohttp import web

from admin_api.metrics import AdminMetrics
from admin_api.webhook_dispatcher import WebhookDispatcher
from gatekeeper.runtime.embedded import EmbeddedPostgres
from gatekeeper.settings import Settings
from gatekeeper.store.clients import open_pg_pool
from gatekeeper.store.migrate import migrate

TENANT = "webhook-bench"


async def _receiver() -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


async def _load(pool: asyncpg.Pool, url: str, args: argparse.Namespace) -> None:
    for _ in range(args.webhooks):
        await pool.execute(
            "INSERT INTO webhooks (webhook_id, tenant_id, url, events, secret)"
            " VALUES ($1, $2, $3, ARRAY['device.changed'], 'whsec_bench')",
            uuid.uuid4(),
            TENANT,
            url,
        )
    await pool.execute(
        "INSERT INTO event_outbox (tenant_id, device_id, type, data)"
        " SELECT $1, 'd' || (i % $3), 'device.changed', jsonb_build_object('n', i)"
        " FROM generate_series(1, $2) AS i",
        TENANT,
        args.events,
        args.devices,
    )


async def _run(url: str, args: argparse.Namespace) -> None:
    await migrate(url)
    runner, hook = await _receiver()
    pools = [await open_pg_pool(url, min_size=1, max_size=10) for _ in range(args.dispatchers)]
    settings = Settings(database_url=url, webhook_allow_private_targets=True)
    try:
        await _load(pools[0], hook, args)
        dispatchers = [
            WebhookDispatcher(p, settings, AdminMetrics(), per_webhook=args.per_webhook)
            for p in pools
        ]
        started = time.perf_counter()
        tasks = [asyncio.create_task(d.run()) for d in dispatchers]
        fanned = None
        total = args.events * args.webhooks
        while True:
            row = await pools[0].fetchrow(
                "SELECT (SELECT count(*) FROM event_outbox WHERE NOT fanned_out) AS events,"
                " (SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered') AS done"
            )
            assert row is not None
            if fanned is None and row["events"] == 0:
                fanned = time.perf_counter() - started
            if row["done"] >= total:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(
            f"{args.events} events x {args.webhooks} webhooks over {args.devices} devices,"
            f" {args.dispatchers} dispatcher(s), {args.per_webhook} per webhook:"
            f" fanned out in {fanned:.2f} s, delivered in {elapsed:.2f} s"
            f" ({total / elapsed:,.0f} deliveries/s)"
        )
    finally:
        for pool in pools:
            await pool.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--webhooks", type=int, default=1)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--per-webhook", type=int, default=8)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    if args.database_url:
        asyncio.run(_run(args.database_url, args))
        return
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as folder:
        postgres = EmbeddedPostgres(Path(folder) / "pg")
        postgres.start()
        try:
            asyncio.run(_run(postgres.url, args))
        finally:
            postgres.stop()


if __name__ == "__main__":
    main()
