"""Proxies upgraded before the admin API: the edge view moved under ``{gk}`` (issue 15), and a
mirror must not load a view that was never built while the previous version's keys still deny
devices: it stays unloaded (fail closed) until a reconcile builds it (real Valkey, Postgres)."""

from __future__ import annotations

import asyncio

import asyncpg
import redis.asyncio as aioredis
from edgerig import eventually

from gatekeeper.domain import edgeview
from gatekeeper.edge.blocklist import BlocklistMirror
from gatekeeper.store import edge_writes as store


async def test_a_mirror_waits_for_the_view_of_its_version(
    pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    member = edgeview.member(tenant, "old")
    await pg_pool.execute(
        "INSERT INTO devices (tenant_id, device_id, is_blocked) VALUES ($1, 'old', true)", tenant
    )
    # Redis as the previous version left it: the old keys, no view under {gk} built yet.
    await redis_client.delete(edgeview.BUILT_KEY)
    await redis_client.srem(edgeview.BLOCKED_SET, member)
    await redis_client.sadd("gk:blocked", member)
    mirror = BlocklistMirror(redis_client, resync_seconds=60.0)
    task = asyncio.create_task(mirror.run())
    try:

        async def refused_once() -> bool:
            return mirror.stale  # one load attempt made and refused

        assert await eventually(refused_once)
        assert not mirror.loaded  # not ready: the proxy answers 503, it does not forward

        await store.reconcile(pg_pool, redis_client)
        assert await redis_client.exists(edgeview.BUILT_KEY)

        async def loaded() -> bool:
            return mirror.loaded

        assert await eventually(loaded, timeout=10.0)
        assert mirror.refuses((tenant, "old"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis_client.srem("gk:blocked", member)


async def test_a_fresh_redis_needs_no_marker(redis_client: aioredis.Redis, tenant: str) -> None:
    """No previous version's keys: nothing to wait for (a first start, the tests' own Redis)."""
    legacy = [k for k in edgeview.LEGACY_KEYS if await redis_client.exists(k)]
    assert legacy == []
    await redis_client.delete(edgeview.BUILT_KEY)
    await redis_client.sadd(edgeview.BLOCKED_SET, edgeview.member(tenant, "new"))
    mirror = BlocklistMirror(redis_client, resync_seconds=60.0)
    task = asyncio.create_task(mirror.run())
    try:

        async def loaded() -> bool:
            return mirror.loaded

        assert await eventually(loaded)
        assert mirror.refuses((tenant, "new"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis_client.srem(edgeview.BLOCKED_SET, edgeview.member(tenant, "new"))
