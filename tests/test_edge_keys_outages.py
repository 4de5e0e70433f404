"""Keys at the edge while Redis misbehaves: a revocation missed during a connection blip, a
dropped connection under a lookup, and a lookup racing a revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import EdgeFactory, Stores
from edgerig import CountingUpstream, eventually
from faultproxy import FaultProxy
from keyrig import call_status, issue_device_key

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent
from gatekeeper.edge.keycache import KeyCache
from gatekeeper.edge.server import EdgeServer
from gatekeeper.store import edge_writes as store
from gatekeeper.store.clients import open_redis

LIMIT_SECONDS = 1.0


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    async with CountingUpstream() as counting:
        yield counting


@pytest.fixture
async def edge(edge_factory: EdgeFactory, upstream: CountingUpstream) -> EdgeServer:
    return await edge_factory(upstream=upstream.url, auth_mode="enforce")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _redis_port(stores: Stores) -> int:
    return int(stores.redis_url.rsplit(":", 1)[1].split("/")[0])


async def test_revocation_missed_during_a_connection_blip_is_caught_on_reconnect(
    stores: Stores,
    edge_factory: EdgeFactory,
    upstream: CountingUpstream,
    session: aiohttp.ClientSession,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    async with FaultProxy("127.0.0.1", _redis_port(stores)) as fault:
        edge = await edge_factory(
            upstream=upstream.url,
            auth_mode="enforce",
            redis_url=fault.url,
            blocklist_resync_seconds=300,
        )
        key = await issue_device_key(pg_pool, redis_client, tenant, "dev-1")
        assert await call_status(session, edge, tenant, "dev-1", X_Api_Key=key.secret) == 200
        await fault.blackhole()  # the revocation's message is lost on the way to the edge
        assert await store.revoke_key(pg_pool, redis_client, tenant, key.key_id)
        assert await call_status(session, edge, tenant, "dev-1", X_Api_Key=key.secret) == 200
        await fault.reset()  # the edge reconnects at once; it must not trust its cache

        async def refused() -> bool:
            return await call_status(session, edge, tenant, "dev-1", X_Api_Key=key.secret) == 401

        assert await eventually(refused, 5.0)


async def test_key_lookup_survives_a_dropped_redis_connection(
    stores: Stores,
    edge_factory: EdgeFactory,
    upstream: CountingUpstream,
    session: aiohttp.ClientSession,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    """A pooled connection that died (Redis restarted, an idle connection cut) costs a
    reconnect, not a 503 to the request that happened to draw it."""
    async with FaultProxy("127.0.0.1", _redis_port(stores)) as fault:
        edge = await edge_factory(upstream=upstream.url, auth_mode="enforce", redis_url=fault.url)
        first = await issue_device_key(pg_pool, redis_client, tenant, "dev-1")
        assert await call_status(session, edge, tenant, "dev-1", X_Api_Key=first.secret) == 200
        await fault.reset()
        second = await issue_device_key(pg_pool, redis_client, tenant, "dev-2")  # not cached yet
        assert await call_status(session, edge, tenant, "dev-2", X_Api_Key=second.secret) == 200


async def test_a_lookup_in_flight_during_a_revocation_is_not_cached(
    stores: Stores,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    """The race: the cache asks Redis, Redis answers "valid", the revocation event arrives,
    then the answer. The answer may serve that one request, but must not stay cached."""
    key = await issue_device_key(pg_pool, redis_client, tenant, "dev-1")
    async with FaultProxy("127.0.0.1", _redis_port(stores)) as fault:
        client = open_redis(fault.url)
        try:
            cache = KeyCache(client, max_entries=100, pepper=None)
            digest = cache.digest(key.secret)
            await client.ping()  # connected before the race starts
            fault.hold()
            lookup = asyncio.create_task(cache.grant(digest))

            async def answered_by_redis() -> bool:
                return bool(fault.held)

            assert await eventually(answered_by_redis, 2.0)
            assert await store.revoke_key(pg_pool, redis_client, tenant, key.key_id)
            cache.on_event(EdgeEvent("revoke", digest))  # as the mirror delivers it
            fault.release()
            assert (await lookup) is not None  # Redis's answer from before the revocation
            assert await client.hget(edgeview.KEYS_HASH, digest) is None
            assert await cache.grant(digest) is None
        finally:
            await client.aclose()
