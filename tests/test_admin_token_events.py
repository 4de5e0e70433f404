"""token.created and token.revoked (issue 14) commit in the transaction of the key row they
describe: a token whose edge write failed leaves neither row nor event, and a revocation that
Postgres holds always has its event, even when the edge could not be told."""

from __future__ import annotations

import socket
import uuid

import asyncpg
import redis.asyncio as aioredis
from conftest import Stores
from test_admin_helpers import Api, admin_settings, problem, running_api

from gatekeeper.store.clients import open_redis


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _token_events(pool: asyncpg.Pool, tenant: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT type FROM event_outbox WHERE tenant_id = $1 AND type LIKE 'token.%' ORDER BY id",
        tenant,
    )
    return [r["type"] for r in rows]


async def test_token_events_commit_with_their_rows_when_redis_fails(
    api: Api, stores: Stores, pg_pool: asyncpg.Pool, tenant: str, redis_client: aioredis.Redis
) -> None:
    live = await api.call("POST", api.path("/tokens"), json={"name": "live"})
    assert live.status == 201
    token_id = (await live.json())["tokenId"]
    assert await _token_events(pg_pool, tenant) == ["token.created"]

    dead_redis = open_redis(f"redis://127.0.0.1:{_unused_port()}/0")
    settings = admin_settings(stores.pg_url, stores.redis_url)
    try:
        async with running_api(settings, pg_pool, dead_redis, tenant) as down:
            # The grant cannot reach the edge: nothing is stored, no event, retry.
            await problem(await down.call("POST", down.path("/tokens"), json={"name": "t"}), 503)
            names = await pg_pool.fetch(
                "SELECT name FROM api_keys WHERE tenant_id = $1 AND kind = 'pat'", tenant
            )
            assert [r["name"] for r in names] == ["live"]
            assert await _token_events(pg_pool, tenant) == ["token.created"]
            # A revocation holds in Postgres (the reconciler tells the edge later): its event too.
            revoked = await down.call("DELETE", down.path(f"/tokens/{token_id}"))
            assert revoked.status == 204, await revoked.text()
    finally:
        await dead_redis.aclose()
    assert await pg_pool.fetchval(
        "SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_id = $1", uuid.UUID(token_id)
    )
    assert await _token_events(pg_pool, tenant) == ["token.created", "token.revoked"]
    # Revoking again changes nothing and writes no second event.
    assert (await api.call("DELETE", api.path(f"/tokens/{token_id}"))).status == 204
    assert await _token_events(pg_pool, tenant) == ["token.created", "token.revoked"]
