"""``redis+cluster://`` and ``redis+sentinel://`` URLs open working clients (real servers)."""

from __future__ import annotations

import time

import asyncpg
import redis.asyncio as aioredis
from clusterrig import SentinelSet, ValkeyCluster
from redis.asyncio.cluster import RedisCluster

from admin_api.console.session import SessionStore
from gatekeeper.domain import edgeview
from gatekeeper.store import edge_writes as store
from gatekeeper.store.clients import is_cluster, open_redis


async def test_a_cluster_url_opens_a_cluster_client(valkey_cluster: ValkeyCluster) -> None:
    redis = open_redis(valkey_cluster.url)
    try:
        assert isinstance(redis, RedisCluster) and is_cluster(redis)
        # The edge view's keys share one slot, so a transaction may span them.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.sadd(edgeview.BLOCKED_SET, "t d")
            pipe.srem(edgeview.SHADOW_SET, "t d")
            pipe.spublish(edgeview.CHANNEL, "block t d")
            assert await pipe.execute() == [1, 0, 0]
        assert await redis.smembers(edgeview.BLOCKED_SET) == {"t d"}
    finally:
        await redis.aclose()


async def test_a_sentinel_url_reaches_the_primary(sentinel_set: SentinelSet) -> None:
    redis = open_redis(sentinel_set.url)
    try:
        assert not is_cluster(redis)
        await redis.set("probe", "1")
        assert sentinel_set.primary.cli("GET", "probe").strip() == "1"
    finally:
        await redis.aclose()


async def test_console_sessions_work_on_a_cluster(valkey_cluster: ValkeyCluster) -> None:
    """A session and its flash message hash to different slots; deleting both still works
    (the cluster client splits the DEL per slot: atomicity is not needed there)."""
    redis = open_redis(valkey_cluster.url)
    try:
        sessions = SessionStore(redis)
        session = await sessions.create("token", "acme", "alice", int(time.time()) + 60)
        await sessions.flash(session, {"text": "saved"})
        assert await sessions.load(session.session_id) == session
        assert await sessions.take_flash(session) == {"text": "saved"}
        await sessions.flash(session, {"text": "again"})
        await sessions.delete(session)
        assert await sessions.load(session.session_id) is None
        assert await sessions.take_flash(session) is None
    finally:
        await redis.aclose()


async def test_an_upgrade_rebuilds_the_new_layout_and_leaves_the_old_one(
    pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    """The edge view moved under the ``{gk}`` hash tag (issue 15). The reconcile the admin API
    runs at start builds it from Postgres; the old keys stay, so that a proxy of the previous
    version keeps denying from them until it is replaced."""
    member = edgeview.member(tenant, "old")
    await pg_pool.execute(
        "INSERT INTO devices (tenant_id, device_id, is_blocked) VALUES ($1, 'old', true)", tenant
    )
    await redis_client.sadd("gk:blocked", member)  # what the previous version wrote
    try:
        await store.reconcile(pg_pool, redis_client)
        assert await redis_client.sismember(edgeview.BLOCKED_SET, member)
        assert await redis_client.sismember("gk:blocked", member)
        assert "gk:blocked" in edgeview.LEGACY_KEYS
    finally:
        await redis_client.srem("gk:blocked", member)
