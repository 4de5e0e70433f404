"""The event outbox: events land in the writer's transaction, in the order given."""

from __future__ import annotations

import asyncpg
import pytest

from gatekeeper.store.outbox import emit, emit_many


async def test_events_commit_and_roll_back_with_their_cause(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    async with pg_pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await emit(conn, tenant, "token.created", {"tokenId": "t1"})
                raise RuntimeError("the cause fails")
        async with conn.transaction():
            await emit_many(
                conn,
                [(tenant, f"d{i}", "device.registered", {"deviceId": f"d{i}"}) for i in range(50)],
            )
    rows = await pg_pool.fetch(
        "SELECT device_id, type, data, event_id FROM event_outbox WHERE tenant_id = $1 ORDER BY id",
        tenant,
    )
    assert [r["device_id"] for r in rows] == [f"d{i}" for i in range(50)]
    assert {r["type"] for r in rows} == {"device.registered"}
    assert len({r["event_id"] for r in rows}) == 50


async def test_an_unknown_event_type_is_refused(pg_pool: asyncpg.Pool, tenant: str) -> None:
    async with pg_pool.acquire() as conn:
        with pytest.raises(ValueError, match="unknown event type"):
            await emit(conn, tenant, "device.exploded", {})
