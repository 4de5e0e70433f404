"""The store's edge-changing operations: Postgres first, then the Redis view, then a publish."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from gatekeeper.domain import edgeview
from gatekeeper.domain.credentials import DEVICE_KEY_PREFIX, digest_secret
from gatekeeper.domain.edgeview import KeyGrant
from gatekeeper.store import edge_writes as store


async def _add_device(pool: asyncpg.Pool, tenant: str, device: str) -> None:
    await pool.execute("INSERT INTO devices (tenant_id, device_id) VALUES ($1, $2)", tenant, device)


async def test_block_writes_postgres_then_redis_and_publishes(
    pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    await _add_device(pg_pool, tenant, "dev-1")
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(edgeview.CHANNEL)
    row = await store.set_blocked(pg_pool, redis_client, tenant, "dev-1", True, "lost")
    assert row is not None and row["is_blocked"] and row["block_reason"] == "lost"
    assert await redis_client.sismember(edgeview.BLOCKED_SET, edgeview.member(tenant, "dev-1"))
    messages = []
    for _ in range(20):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if msg:
            messages.append(msg["data"])
            break
    assert messages == [f"block {tenant} dev-1"]
    await pubsub.aclose()  # type: ignore[no-untyped-call]

    again = await store.set_blocked(pg_pool, redis_client, tenant, "dev-1", True)
    assert again is not None and again["blocked_at"] == row["blocked_at"]  # idempotent
    unblocked = await store.set_blocked(pg_pool, redis_client, tenant, "dev-1", False)
    assert unblocked is not None and not unblocked["is_blocked"] and unblocked["blocked_at"] is None
    assert not await redis_client.sismember(edgeview.BLOCKED_SET, edgeview.member(tenant, "dev-1"))


async def test_block_unknown_device_returns_none(
    pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    assert await store.set_blocked(pg_pool, redis_client, tenant, "ghost", True) is None
    assert not await redis_client.sismember(edgeview.BLOCKED_SET, edgeview.member(tenant, "ghost"))


async def test_keys_issue_and_revoke(
    pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    await _add_device(pg_pool, tenant, "dev-2")
    issued = await store.issue_key(
        pg_pool, redis_client, tenant, kind="device", prefix=DEVICE_KEY_PREFIX, device_id="dev-2"
    )
    assert issued.secret.startswith("gkd_") and issued.secret not in repr(issued)
    digest = digest_secret(issued.secret)
    stored = await pg_pool.fetchval("SELECT digest FROM api_keys WHERE key_id = $1", issued.key_id)
    assert stored == digest  # only the digest is stored
    raw = await redis_client.hget(edgeview.KEYS_HASH, digest.hex())
    assert isinstance(raw, str)
    grant = KeyGrant.decode(raw)
    assert grant == KeyGrant(tenant, "device", "dev-2", None)
    assert await store.revoke_device_keys(pg_pool, redis_client, tenant, "dev-2") == 1
    assert await redis_client.hget(edgeview.KEYS_HASH, digest.hex()) is None


async def test_reconcile_rebuilds_the_edge_view(
    pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    await _add_device(pg_pool, tenant, "dev-3")
    await pg_pool.execute(
        "UPDATE devices SET is_blocked = true, blocked_at = now() WHERE tenant_id = $1", tenant
    )
    counts = await store.reconcile(pg_pool, redis_client)
    assert counts["blocked"] >= 1
    assert await redis_client.sismember(edgeview.BLOCKED_SET, edgeview.member(tenant, "dev-3"))
