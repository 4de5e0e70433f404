"""Operations endpoints of the admin port: liveness, readiness (both stores reachable), metrics.

A read replica (``database_read_url``) is reported in ``checks`` as ``postgres_read`` but does
not make the admin unready: without it only the device list and export answer 503, and taking
every admin instance out of its Service would stop the writes too."""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg
from aiohttp import web

from admin_api.context import PG_POOL, REDIS
from admin_api.readreplica import READ_POOL
from gatekeeper.readiness import readiness_answer
from gatekeeper.store.clients import REDIS_FAILURES

__all__ = ["healthz", "readyz"]

_PROBE_TIMEOUT: Final = 2.0


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def _postgres_ok(pool: asyncpg.Pool) -> bool:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            return bool(await pool.fetchval("SELECT true"))
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False


async def _redis_ok(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            return bool(await request.app[REDIS].ping())
    except REDIS_FAILURES:
        return False


async def readyz(request: web.Request) -> web.Response:
    """Ready when Postgres and Redis both answer; the shape of every ``/readyz``
    (:mod:`gatekeeper.readiness`), naming the store that does not."""
    read = request.app[READ_POOL]
    postgres, redis, replica = await asyncio.gather(
        _postgres_ok(request.app[PG_POOL]),
        _redis_ok(request),
        _postgres_ok(read.pool) if read.replica else asyncio.sleep(0, True),
    )
    checks = {"postgres": postgres, "redis": redis}
    reasons = [f"{name} unreachable" for name, ok in checks.items() if not ok]
    if read.replica:
        checks["postgres_read"] = replica
    status, body = readiness_answer(checks, reasons)
    return web.json_response(body, status=status)
