"""Bulk block, unblock and delete: one call acts on every device a filter matches.

``POST /api/{tenantId}/devices/bulk-block`` (and ``bulk-unblock``, ``bulk-delete``) take
``{filter, reason?, dryRun?}`` (:mod:`admin_api.filters`) and answer ``{matched, changed}``:
how many devices the filter matched, and how many the call changed (newly blocked, newly
unblocked, deleted). ``dryRun`` answers the same counts and changes nothing, nor is it audited.

- Block and unblock commit in **one** Postgres transaction: all or nothing, as a single block
  is. Then the edge view is written in chunks and announced with one message
  (:func:`gatekeeper.store.edge_batch.write_batch`).
- Delete goes in batches of :data:`DELETE_BATCH`, each its own transaction: deleting (with the
  history rows that cascade) holds locks far longer than a flag update, and nothing needs the
  deletions to be atomic; each is what a single delete does (keys revoked in the same
  transaction, the device's disabled mark cleared at the edge). Blocked devices are never
  deleted: they count as matched, not changed.
- A bulk block keeps the first ``blockedAt`` and the reason of devices already blocked (they are
  matched, not changed): a recall must not overwrite why a stolen tablet was blocked. A bulk
  block enforces: a shadow-blocked device is switched to enforce (changed; its blockedAt and
  reason kept), as ``POST …/block`` without a mode does.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, Literal

import asyncpg
from aiohttp import web
from asyncpg.pool import PoolConnectionProxy

from admin_api import audit
from admin_api.auth import DEVICE_WRITE, authorize
from admin_api.context import PG_POOL, REDIS
from admin_api.edgesync import EDGE_SYNC
from admin_api.filters import FILTER_SCHEMA, DeviceFilter, from_body, where_clause
from admin_api.schemas import BLOCK_REQUEST
from admin_api.validation import read_json, validator
from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent
from gatekeeper.store.edge_batch import write_batch
from gatekeeper.store.outbox import emit_many

__all__ = [
    "BULK_MAX_BODY_BYTES",
    "BULK_REQUEST",
    "BULK_RESULT",
    "DELETE_BATCH",
    "bulk_block",
    "bulk_delete",
    "bulk_unblock",
]

Action = Literal["block", "unblock", "delete"]

_log = logging.getLogger(__name__)

# 10,000 device ids of up to 128 characters, quoted and separated, fit with room to spare; the
# app's 64 KiB limit holds for every other route.
BULK_MAX_BODY_BYTES: Final = 2 * 1024 * 1024
DELETE_BATCH: Final = 5_000

BULK_REQUEST: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "filter": FILTER_SCHEMA,
        "reason": BLOCK_REQUEST["properties"]["reason"],
        "dryRun": {
            "type": "boolean",
            "default": False,
            "description": "Count only: change nothing, write no audit entry",
        },
    },
    "required": ["filter"],
    "additionalProperties": False,
}
BULK_RESULT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "matched": {"type": "integer", "minimum": 0, "description": "Devices the filter matched"},
        "changed": {
            "type": "integer",
            "minimum": 0,
            "description": "Devices this call blocked, unblocked or deleted (would, in a dry run)",
        },
    },
    "required": ["matched", "changed"],
}
_CHECK = validator(BULK_REQUEST)

_FROM: Final = (
    " FROM device_activity a"
    " JOIN devices d ON d.tenant_id = a.tenant_id AND d.device_id = a.device_id"
)
# Which matched devices an action changes: block the unblocked and the shadow-blocked (a bulk
# block enforces), unblock the blocked (either mode), delete the unblocked (never a blocked one).
_CHANGES: Final[dict[Action, str]] = {
    "block": "d.block_mode IS DISTINCT FROM 'enforce'",
    "unblock": "d.is_blocked",
    "delete": "NOT d.is_blocked",
}


async def _count(pool: asyncpg.Pool, action: Action, query: DeviceFilter) -> tuple[int, int]:
    """``(matched, would change)``, changing nothing."""
    args: list[Any] = [query.tenant_id]
    where = where_clause(query, args)
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        # As the list does (admin_api.listing.fetch_page): a generic plan cannot see a rare q.
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        row = await conn.fetchrow(
            f"SELECT count(*), count(*) FILTER (WHERE {_CHANGES[action]}){_FROM} WHERE {where}",
            *args,
        )
    assert row is not None  # an aggregate always answers one row
    return int(row[0]), int(row[1])


# A device newly blocked gets now and the reason; a shadow block switched to enforce keeps its
# first blockedAt and its reason (the given one only where it had none).
_BLOCK: Final = """
UPDATE devices SET
    is_blocked = true,
    block_mode = 'enforce',
    blocked_at = COALESCE(blocked_at, now()),
    block_reason = CASE WHEN is_blocked THEN COALESCE(block_reason, $3) ELSE $3 END,
    updated_at = now()
WHERE tenant_id = $1 AND device_id = ANY($2::text[]) AND block_mode IS DISTINCT FROM 'enforce'
"""
# The mode goes with the block (the devices_block_mode trigger, migration 0005).
_UNBLOCK: Final = """
UPDATE devices SET is_blocked = false, blocked_at = NULL, block_reason = NULL, updated_at = now()
WHERE tenant_id = $1 AND device_id = ANY($2::text[]) AND is_blocked
"""


async def _lock_activity(conn: PoolConnectionProxy[Any], tenant_id: str, ids: list[str]) -> None:
    """Lock the activity rows of ``ids`` in key order, the order the activity flush locks them:
    the trigger that follows (block copy, delete) would otherwise take them in plan order."""
    await conn.execute(
        "SELECT 1 FROM device_activity WHERE tenant_id = $1 AND device_id = ANY($2::text[])"
        " ORDER BY device_id FOR UPDATE",
        tenant_id,
        ids,
    )


async def _set_blocked(
    pool: asyncpg.Pool, query: DeviceFilter, blocked: bool, reason: str | None
) -> tuple[int, list[str]]:
    """One transaction: lock the matched devices, change those that differ. ``(matched, changed
    device ids)``.

    Locks are taken in key order, ``devices`` rows first and then their ``device_activity`` rows
    (which the block trigger updates): the order a single change and the activity flush take
    them in (migration 0004), so a bulk change waits for them but never deadlocks with them."""
    args: list[Any] = [query.tenant_id]
    where = where_clause(query, args)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        rows = await conn.fetch(
            f"SELECT d.device_id, d.is_blocked, d.block_mode{_FROM} WHERE {where}"
            " ORDER BY d.device_id FOR UPDATE OF d",
            *args,
        )
        # A bulk block enforces: a shadow-blocked device is switched to enforce (changed).
        ids = [r[0] for r in rows if (r[2] != "enforce" if blocked else r[1])]
        if ids:
            await _lock_activity(conn, query.tenant_id, ids)
            if blocked:
                await conn.execute(_BLOCK, query.tenant_id, ids, reason)
            else:
                await conn.execute(_UNBLOCK, query.tenant_id, ids)
            # One event per device changed, one statement, in the change's transaction.
            await emit_many(conn, _events(query.tenant_id, ids, blocked, reason))
    return len(rows), ids


def _events(
    tenant_id: str, ids: list[str], blocked: bool, reason: str | None
) -> list[tuple[str, str | None, str, dict[str, Any]]]:
    if blocked:
        data: dict[str, Any] = {"reason": reason, "mode": "enforce", "bulk": True}
        return [(tenant_id, i, "device.blocked", {"deviceId": i, **data}) for i in ids]
    return [(tenant_id, i, "device.unblocked", {"deviceId": i, "bulk": True}) for i in ids]


async def _delete_batch(
    pool: asyncpg.Pool, query: DeviceFilter, after: str
) -> tuple[list[str], list[EdgeEvent]]:
    """Delete the next unblocked matching devices after ``after`` (key order), revoking their
    keys, in one short transaction. The deleted ids, and the edge changes to announce."""
    args: list[Any] = [query.tenant_id]
    where = where_clause(query, args)
    args += [after, DELETE_BATCH]
    tenant = query.tenant_id
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        rows = await conn.fetch(
            f"SELECT d.device_id, d.is_enabled{_FROM} WHERE {where} AND NOT d.is_blocked"
            f" AND d.device_id > ${len(args) - 1}"
            f" ORDER BY d.device_id LIMIT ${len(args)} FOR UPDATE OF d",
            *args,
        )
        ids = [r[0] for r in rows]
        if not ids:
            return [], []
        digests = await conn.fetch(
            "UPDATE api_keys SET revoked_at = now()"
            " WHERE tenant_id = $1 AND device_id = ANY($2::text[]) AND revoked_at IS NULL"
            " RETURNING digest",
            tenant,
            ids,
        )
        await _lock_activity(conn, tenant, ids)
        await conn.execute(
            "DELETE FROM devices WHERE tenant_id = $1 AND device_id = ANY($2::text[])", tenant, ids
        )
        await emit_many(
            conn, [(tenant, i, "device.deleted", {"deviceId": i, "bulk": True}) for i in ids]
        )
    # A deleted device must not stay denied at the edge: a device that registers again under
    # that id starts enabled, as a single delete leaves it.
    events = [EdgeEvent("revoke", r[0].hex()) for r in digests]
    events += [EdgeEvent("enable", edgeview.member(tenant, r[0])) for r in rows if not r[1]]
    return ids, events


async def _run(request: web.Request, action: Action) -> web.Response:
    principal = await authorize(request, DEVICE_WRITE)
    # Up to 10,000 device ids need more than the app's body limit (admin_api.app).
    body = await read_json(request.clone(client_max_size=BULK_MAX_BODY_BYTES), _CHECK)
    query = from_body(principal.tenant_id, body["filter"])
    pool, redis, edge = request.app[PG_POOL], request.app[REDIS], request.app[EDGE_SYNC]
    reason = body.get("reason") if action == "block" else None
    if body.get("dryRun", False):
        matched, changed = await _count(pool, action, query)
        return web.json_response({"matched": matched, "changed": changed})
    started = time.perf_counter()
    if action == "delete":
        matched, _ = await _count(pool, action, query)
        changed, after = 0, ""
        while True:
            ids, events = await _delete_batch(pool, query, after)
            changed += len(ids)
            await edge.call(write_batch(redis, events))
            if len(ids) < DELETE_BATCH:
                break
            after = ids[-1]
    else:
        blocked = action == "block"
        matched, ids = await _set_blocked(pool, query, blocked, reason)
        committed = time.perf_counter()
        changed = len(ids)
        kind: Literal["block", "unblock"] = "block" if blocked else "unblock"
        tenant = principal.tenant_id
        await edge.call(
            write_batch(redis, [EdgeEvent(kind, edgeview.member(tenant, i)) for i in ids])
        )
        # One line per bulk call (never per request): where the time of a big one went.
        _log.info(
            "bulk-%s: %d matched, %d changed; Postgres %.3f s, edge view %.3f s",
            action,
            matched,
            changed,
            committed - started,
            time.perf_counter() - committed,
        )
    await audit.record(
        request,
        principal,
        f"device.bulk-{action}",
        "device",
        "*",  # many devices: the filter in the details says which
        reason=body.get("reason"),
        details={"filter": body["filter"], "matched": matched, "changed": changed},
    )
    return web.json_response({"matched": matched, "changed": changed})


async def bulk_block(request: web.Request) -> web.Response:
    return await _run(request, "block")


async def bulk_unblock(request: web.Request) -> web.Response:
    return await _run(request, "unblock")


async def bulk_delete(request: web.Request) -> web.Response:
    return await _run(request, "delete")
