"""Device routes: create, read, update (PUT), delete, block, unblock, history.

Changes the edge must see (block, unblock, enable, disable, key revocation) go through
:mod:`gatekeeper.store.edge_writes` (Postgres first, then Redis and a publish) via
:class:`EdgeSync`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
from aiohttp import web
from asyncpg.pool import PoolConnectionProxy

from admin_api import audit, schemas
from admin_api.auth import DEVICE_READ, DEVICE_WRITE, authorize
from admin_api.context import PG_POOL, REDIS
from admin_api.edgesync import EDGE_SYNC
from admin_api.errors import conflict, not_found
from admin_api.paging import next_link
from admin_api.serialize import (
    decode_cursor,
    device_json,
    encode_cursor,
    from_micros,
    history_json,
    micros,
    rfc3339,
)
from admin_api.validation import (
    check_query,
    cursor_param,
    parse_limit,
    read_json,
    validator,
)
from gatekeeper.domain.identity import valid_device_id
from gatekeeper.store import edge_writes as store
from gatekeeper.store.edge_writes import DEVICE_VIEW
from gatekeeper.store.outbox import emit

__all__ = [
    "block_device",
    "create_device",
    "delete_device",
    "device_history",
    "device_id_param",
    "fetch_device",
    "get_device",
    "unblock_device",
    "update_device",
]

_CREATE = validator(schemas.CREATE_DEVICE)
_UPDATE = validator(schemas.UPDATE_DEVICE)
_BLOCK = validator(schemas.BLOCK_REQUEST)
_EMPTY = validator({"type": "object", "properties": {}, "additionalProperties": False})


def device_id_param(request: web.Request) -> str:
    """The path's device id; 404 when it cannot name a device at all."""
    device_id = request.match_info["deviceId"]
    if not valid_device_id(device_id):
        raise not_found("No such device")
    return device_id


def device_location(tenant_id: str, device_id: str) -> str:
    return f"/api/{quote(tenant_id, safe='')}/devices/{quote(device_id, safe='')}"


async def fetch_device(
    pool: asyncpg.Pool | PoolConnectionProxy[Any], tenant_id: str, device_id: str
) -> asyncpg.Record:
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT * FROM {DEVICE_VIEW} WHERE tenant_id = $1 AND device_id = $2", tenant_id, device_id
    )
    if row is None:
        raise not_found("No such device")
    return row


async def get_device(request: web.Request) -> web.Response:
    principal = await authorize(request, DEVICE_READ)
    row = await fetch_device(request.app[PG_POOL], principal.tenant_id, device_id_param(request))
    return web.json_response(device_json(row))


async def create_device(request: web.Request) -> web.Response:
    principal = await authorize(request, DEVICE_WRITE)
    body = await read_json(request, _CREATE)  # the type's settings schema included
    device_id = body.get("deviceId") or str(uuid.uuid4())
    pool = request.app[PG_POOL]
    created = await pool.fetchval(
        """
        INSERT INTO devices (tenant_id, device_id, type, name, description, settings)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb)
        ON CONFLICT (tenant_id, device_id) DO NOTHING
        RETURNING device_id
        """,
        principal.tenant_id,
        device_id,
        body["type"],
        body.get("name"),
        body.get("description"),
        json.dumps(body["settings"]),
    )
    if created is None:
        raise conflict("A device with this deviceId already exists")
    row = await fetch_device(pool, principal.tenant_id, device_id)
    await audit.record(
        request,
        principal,
        "device.create",
        "device",
        device_id,
        details={"type": body["type"], "name": body.get("name")},
    )
    return web.json_response(
        device_json(row),
        status=201,
        headers={"Location": device_location(principal.tenant_id, device_id)},
    )


async def update_device(request: web.Request) -> web.Response:
    principal = await authorize(request, DEVICE_WRITE)
    device_id = device_id_param(request)
    body = await read_json(request, _UPDATE)
    pool = request.app[PG_POOL]
    updated = await pool.fetchval(
        """
        UPDATE devices SET
            name = CASE WHEN $3 THEN $4 ELSE name END,
            description = CASE WHEN $5 THEN $6 ELSE description END,
            updated_at = CASE
                WHEN ($3 AND name IS DISTINCT FROM $4)
                  OR ($5 AND description IS DISTINCT FROM $6) THEN now()
                ELSE updated_at END
        WHERE tenant_id = $1 AND device_id = $2
        RETURNING device_id
        """,
        principal.tenant_id,
        device_id,
        "name" in body,
        body.get("name"),
        "description" in body,
        body.get("description"),
    )
    if updated is None:
        raise not_found("No such device")
    if "isEnabled" in body:
        edge = request.app[EDGE_SYNC]
        await edge.call(
            store.set_enabled(
                pool, request.app[REDIS], principal.tenant_id, device_id, body["isEnabled"]
            )
        )
    row = await fetch_device(pool, principal.tenant_id, device_id)
    await audit.record(request, principal, "device.update", "device", device_id, details=body)
    return web.json_response(device_json(row))


async def delete_device(request: web.Request) -> web.Response:
    """Revoke the device's keys, clear it from the edge's disabled set, then delete it.

    A blocked device is kept (409): deleting it would silently lift the block, and a device
    that re-registers would come back unblocked."""
    principal = await authorize(request, DEVICE_WRITE)
    device_id = device_id_param(request)
    pool, redis, edge = request.app[PG_POOL], request.app[REDIS], request.app[EDGE_SYNC]
    tenant_id = principal.tenant_id
    row = await fetch_device(pool, tenant_id, device_id)
    if row["is_blocked"]:
        raise conflict("The device is blocked; unblock it before deleting it")
    revoked, _ = await edge.call(store.revoke_device_keys(pool, redis, tenant_id, device_id))
    if not row["is_enabled"]:
        await edge.call(store.set_enabled(pool, redis, tenant_id, device_id, True))
    async with pool.acquire() as conn, conn.transaction():
        deleted = await conn.fetchval(
            "DELETE FROM devices WHERE tenant_id = $1 AND device_id = $2 AND NOT is_blocked"
            " RETURNING device_id",
            tenant_id,
            device_id,
        )
        if deleted is not None:
            await emit(conn, tenant_id, "device.deleted", {"deviceId": device_id}, device_id)
    if deleted is None:  # blocked (or deleted) while we revoked its keys
        if await pool.fetchval(
            "SELECT is_blocked FROM devices WHERE tenant_id = $1 AND device_id = $2",
            tenant_id,
            device_id,
        ):
            raise conflict("The device was blocked while being deleted; its keys are revoked")
        raise not_found("No such device")
    await audit.record(
        request, principal, "device.delete", "device", device_id, details={"revokedKeys": revoked}
    )
    return web.Response(status=204)


async def _set_blocked(request: web.Request, blocked: bool) -> web.Response:
    principal = await authorize(request, DEVICE_WRITE)
    device_id = device_id_param(request)
    reason = None
    mode: store.BlockMode = "enforce"
    if blocked:
        body = await read_json(request, _BLOCK, optional=True)
        reason, mode = body.get("reason"), body.get("mode", "enforce")
    else:
        await read_json(request, _EMPTY, optional=True)
    pool = request.app[PG_POOL]
    row, synced = await request.app[EDGE_SYNC].call(
        store.set_blocked(
            pool, request.app[REDIS], principal.tenant_id, device_id, blocked, reason, mode=mode
        )
    )
    if not synced:  # Postgres holds the change; read it back
        row = await fetch_device(pool, principal.tenant_id, device_id)
    if row is None:
        raise not_found("No such device")
    await audit.record(
        request,
        principal,
        "device.block" if blocked else "device.unblock",
        "device",
        device_id,
        reason=reason,
        details={"mode": mode} if blocked else None,
    )
    return web.json_response(device_json(row))


async def block_device(request: web.Request) -> web.Response:
    return await _set_blocked(request, True)


async def unblock_device(request: web.Request) -> web.Response:
    return await _set_blocked(request, False)


async def clear_conflict(request: web.Request) -> web.Response:
    """Acknowledge the device's clone conflict: ``conflictAt`` back to null, the history's flagged
    records kept. Idempotent; the Device. A later flip back to the hardware it left flags it
    again."""
    principal = await authorize(request, DEVICE_WRITE)
    device_id = device_id_param(request)
    await read_json(request, _EMPTY, optional=True)
    pool = request.app[PG_POOL]
    # One statement on the recorder's own row: it locks nothing a flush does not already wait on.
    was = await pool.fetchval(
        """
        WITH old AS (
            SELECT conflict_at FROM device_activity
            WHERE tenant_id = $1 AND device_id = $2 AND conflict_at IS NOT NULL
            FOR UPDATE
        )
        UPDATE device_activity SET conflict_at = NULL FROM old
        WHERE tenant_id = $1 AND device_id = $2
        RETURNING old.conflict_at
        """,
        principal.tenant_id,
        device_id,
    )
    row = await fetch_device(pool, principal.tenant_id, device_id)
    await audit.record(
        request,
        principal,
        "device.conflict_clear",
        "device",
        device_id,
        details={"conflictAt": rfc3339(was)},
    )
    return web.json_response(device_json(row))


async def device_history(request: web.Request) -> web.Response:
    """Newest first by (recordedAt, id); keyset-paginated like the device list."""
    principal = await authorize(request, DEVICE_READ)
    device_id = device_id_param(request)
    check_query(request, ("limit", "cursor"))
    limit = parse_limit(request)
    pool = request.app[PG_POOL]
    await fetch_device(pool, principal.tenant_id, device_id)
    args: list[Any] = [principal.tenant_id, device_id, limit + 1]
    where = "tenant_id = $1 AND device_id = $2"
    cursor = cursor_param(request)
    if cursor is not None:
        at_micros, record_id = decode_cursor(cursor, int, int)
        where += " AND (recorded_at, id) < ($4, $5)"
        args += [from_micros(at_micros), record_id]
    rows = await pool.fetch(
        f"SELECT * FROM device_history WHERE {where} ORDER BY recorded_at DESC, id DESC LIMIT $3",
        *args,
    )
    headers: dict[str, str] = {}
    if len(rows) > limit:
        rows = rows[:limit]
        headers["Link"] = next_link(
            request, encode_cursor(micros(rows[-1]["recorded_at"]), rows[-1]["id"])
        )
    return web.json_response([history_json(r) for r in rows], headers=headers)
