"""Helpers of the edge key tests: a proxied call with headers, and keys issued through the
store."""

from __future__ import annotations

from datetime import datetime

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from gatekeeper.domain.credentials import DEVICE_KEY_PREFIX, TOKEN_PREFIX
from gatekeeper.edge.server import EdgeServer
from gatekeeper.store import edge_writes as store


async def call_edge(
    session: aiohttp.ClientSession,
    edge: EdgeServer,
    tenant: str,
    device: str | None,
    **headers: str,
) -> tuple[int, aiohttp.ClientResponse]:
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    if device is not None:
        sent["X-Device-Id"] = device
    async with session.get(
        f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/things", headers=sent
    ) as response:
        await response.read()
        return response.status, response


async def call_status(
    session: aiohttp.ClientSession,
    edge: EdgeServer,
    tenant: str,
    device: str | None,
    **headers: str,
) -> int:
    return (await call_edge(session, edge, tenant, device, **headers))[0]


async def issue_device_key(
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    tenant: str,
    device: str,
    expires_at: datetime | None = None,
) -> store.IssuedKey:
    return await store.issue_key(
        pool,
        redis,
        tenant,
        kind="device",
        prefix=DEVICE_KEY_PREFIX,
        device_id=device,
        expires_at=expires_at,
    )


async def issue_pat(pool: asyncpg.Pool, redis: aioredis.Redis, tenant: str) -> store.IssuedKey:
    return await store.issue_key(pool, redis, tenant, kind="pat", prefix=TOKEN_PREFIX, name="ci")
