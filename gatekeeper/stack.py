"""``gatekeeper up``: the whole stack on one machine, embedded stores when none is given.

Starts (as needed) PostgreSQL and Valkey from their wheels in ``data_dir``, migrates, then serves
the proxy, the admin API and the ops endpoints, prints what runs where, and on Ctrl-C stops all
of it in reverse order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gatekeeper.demo_upstream import create_demo_upstream
from gatekeeper.edge import EdgeServer
from gatekeeper.embedded import EmbeddedPostgres, EmbeddedRedis
from gatekeeper.migrate import migrate
from gatekeeper.settings import Settings, SettingsError, mask_url

if TYPE_CHECKING:
    from gatekeeper.cli import Service

__all__ = ["run_stack"]


@contextlib.asynccontextmanager
async def _embedded_stores(settings: Settings) -> AsyncIterator[Settings]:
    postgres = redis = None
    try:
        if not settings.database_url:
            postgres = EmbeddedPostgres(settings.data_dir / "postgres")
            settings = settings.replace(database_url=postgres.start())
            print(f"  postgres  {settings.database_url}  (embedded, data in {postgres.data_dir})")
        if not settings.redis_url:
            redis = EmbeddedRedis(settings.data_dir / "redis")
            settings = settings.replace(redis_url=redis.start())
            print(f"  redis     {settings.redis_url}  (embedded valkey)")
        yield settings
    finally:
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()


@contextlib.asynccontextmanager
async def _demo_upstream(settings: Settings) -> AsyncIterator[str]:
    runner = web.AppRunner(create_demo_upstream(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def run_stack(settings: Settings, *, demo_upstream: bool,
                    until: Callable[[], Awaitable[None]],
                    admin: Callable[[Settings], Service]) -> None:
    if not demo_upstream and not settings.upstream:
        raise SettingsError("give --upstream URL, or --demo-upstream for the built-in echo")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.jwt_secret is None and settings.jwks_url is None:
        from gatekeeper.admin_tokens import load_or_create_local_secret

        settings = settings.replace(jwt_secret=load_or_create_local_secret(settings.data_dir))
    print("gatekeeper up:", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        settings = await stack.enter_async_context(_embedded_stores(settings))
        await migrate(settings.database_url or "")
        if demo_upstream:
            upstream = await stack.enter_async_context(_demo_upstream(settings))
            settings = settings.replace(upstream=upstream)
            print(f"  upstream  {upstream}  (built-in demo echo)")
        admin_service = admin(settings)
        await admin_service.start()
        stack.push_async_callback(admin_service.stop)
        edge = EdgeServer(settings)
        await edge.start()
        stack.push_async_callback(edge.stop)
        host = settings.host
        print(f"  proxy     http://{host}:{edge.proxy_port}  -> {mask_url(settings.upstream)}")
        print(f"  admin     http://{host}:{admin_service.port}  (docs at /docs)")
        print(f"  metrics   http://{host}:{edge.metrics_port}/metrics  (/healthz, /readyz)")
        print("  admin token: gatekeeper token --tenant <tenant>   |   Ctrl-C stops everything",
              flush=True)
        await until()
        print("gatekeeper: stopping (draining requests, flushing activity)...", flush=True)
    print("gatekeeper: stopped", flush=True)
