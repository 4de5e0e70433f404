"""Operations endpoints of the admin port: liveness, readiness (both stores reachable), metrics."""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg
from aiohttp import web
from redis.exceptions import RedisClusterException, RedisError

from admin_api.context import PG_POOL, REDIS
from gatekeeper.readiness import readiness_answer

__all__ = ["healthz", "readyz"]

_PROBE_TIMEOUT: Final = 2.0


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def _postgres_ok(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            return bool(await request.app[PG_POOL].fetchval("SELECT true"))
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False


async def _redis_ok(request: web.Request) -> bool:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            return bool(await request.app[REDIS].ping())
    except (TimeoutError, RedisError, RedisClusterException, OSError):
        return False


async def readyz(request: web.Request) -> web.Response:
    """Ready when Postgres and Redis both answer; the shape of every ``/readyz``
    (:mod:`gatekeeper.readiness`), naming the store that does not."""
    postgres, redis = await asyncio.gather(_postgres_ok(request), _redis_ok(request))
    checks = {"postgres": postgres, "redis": redis}
    reasons = [f"{name} unreachable" for name, ok in checks.items() if not ok]
    status, body = readiness_answer(checks, reasons)
    return web.json_response(body, status=status)
