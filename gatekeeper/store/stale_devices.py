"""Stale devices: which unblocked devices of a tenant were inactive since before a cutoff, and
their deletion in small batches, keys revoked and the edge told (issue 13).

A device's last sign of life is its last activity (``device_activity.last_active_at``), or, for a
device the edge never saw, its creation. Blocked devices (in either mode) are never stale: a
block is an admin's decision about that device, and deleting it would lift the block.

:func:`stale_candidates` is the report and the job's source alike, so what the report lists is
what a run with the same cutoff deletes. :func:`delete_stale_batch` deletes one batch in one
short transaction that checks every condition again (a device active or blocked since it was
listed stays), revokes the batch's keys in the same transaction, then updates the edge view in
one round trip, as the single delete does.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent
from gatekeeper.store.clients import RedisClient, RedisPipeline
from gatekeeper.store.edge_writes import EdgeSyncError, _sync
from gatekeeper.store.outbox import emit_many

__all__ = ["count_stale", "delete_stale_batch", "stale_candidates"]

# The list's activity index (0004) serves the range on ``last_activity_at``, which for an
# unblocked device is its last activity; the never-active (NULL, sorted as -infinity) are then
# filtered by creation time.
_STALE = """
    FROM device_activity a
    JOIN devices d ON d.tenant_id = a.tenant_id AND d.device_id = a.device_id
    WHERE a.tenant_id = $1
      AND COALESCE(a.last_activity_at, '-infinity'::timestamptz) < $2
      AND NOT a.is_blocked AND NOT d.is_blocked
      AND COALESCE(a.last_active_at, d.created_at) < $2
"""


async def stale_candidates(
    conn: asyncpg.Pool | asyncpg.Connection,
    tenant_id: str,
    cutoff: datetime,
    limit: int,
    after: str = "",
) -> list[str]:
    """Device ids of the tenant inactive since before ``cutoff``, in id order after ``after``."""
    rows = await conn.fetch(
        f"SELECT a.device_id {_STALE} AND a.device_id > $3 ORDER BY a.device_id LIMIT $4",
        tenant_id,
        cutoff,
        after,
        limit,
    )
    return [r[0] for r in rows]


async def count_stale(
    conn: asyncpg.Pool | asyncpg.Connection, tenant_id: str, cutoff: datetime
) -> int:
    count: int = await conn.fetchval(f"SELECT count(*) {_STALE}", tenant_id, cutoff)
    return count


async def delete_stale_batch(
    pool: asyncpg.Pool,
    redis: RedisClient,
    tenant_id: str,
    device_ids: list[str],
    cutoff: datetime,
) -> tuple[list[str], EdgeSyncError | None]:
    """Delete those of ``device_ids`` still stale: the ids deleted, and the Redis failure if the
    edge could not be told (Postgres committed first: the deletion stands, and a reconcile
    repairs the view)."""
    async with pool.acquire() as conn, conn.transaction():
        gone = await conn.fetch(
            """
            DELETE FROM devices d USING device_activity a
            WHERE d.tenant_id = $1 AND d.device_id = ANY($2::text[]) AND NOT d.is_blocked
              AND a.tenant_id = d.tenant_id AND a.device_id = d.device_id
              AND COALESCE(a.last_active_at, d.created_at) < $3
            RETURNING d.device_id, d.is_enabled
            """,
            tenant_id,
            sorted(device_ids),
            cutoff,
        )
        deleted = [r["device_id"] for r in gone]
        await emit_many(
            conn,
            [(tenant_id, i, "device.deleted", {"deviceId": i, "stale": True}) for i in deleted],
        )
        digests = await conn.fetch(
            """
            UPDATE api_keys SET revoked_at = now()
            WHERE tenant_id = $1 AND device_id = ANY($2::text[]) AND revoked_at IS NULL
            RETURNING digest
            """,
            tenant_id,
            deleted,
        )
    hexes = [r["digest"].hex() for r in digests]
    disabled = [edgeview.member(tenant_id, r["device_id"]) for r in gone if not r["is_enabled"]]
    if hexes or disabled:

        def stage(pipe: RedisPipeline) -> None:
            if hexes:
                pipe.hdel(edgeview.KEYS_HASH, *hexes)
            if disabled:
                pipe.srem(edgeview.DISABLED_SET, *disabled)

        events = [EdgeEvent("revoke", h) for h in hexes] + [
            EdgeEvent("enable", m) for m in disabled
        ]
        try:
            await _sync(redis, stage, events)
        except EdgeSyncError as exc:
            return deleted, exc
    return deleted, None
