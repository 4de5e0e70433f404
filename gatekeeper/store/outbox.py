"""The event outbox (issue 14): events written in the transaction of the change that caused
them (migration 0007). Writers call :func:`emit` or :func:`emit_many` on the connection that
holds their transaction; the admin process's dispatcher reads the table and delivers.

Event types are those of ``shared/DESIGN.md`` ("Events out"); ``data`` is the event's JSON body
without the envelope (``id``, ``type``, ``createdAt``, ``tenantId`` are columns).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["EVENT_TYPES", "TEST_EVENT", "Conn", "emit", "emit_many"]

EVENT_TYPES: Final = (
    "device.registered",
    "device.changed",
    "device.blocked",
    "device.unblocked",
    "device.deleted",
    "device.conflict",
    "key.reset",
    "token.created",
    "token.revoked",
)
# Sent by POST …/webhooks/{webhookId}/test to the one webhook its data names (``webhookId``),
# whatever that webhook subscribed to; not an event type a webhook can subscribe to.
TEST_EVENT: Final = "webhook.test"
_EMITTABLE: Final = frozenset((*EVENT_TYPES, TEST_EVENT))

# A connection holding the caller's transaction: its own, or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy

_INSERT: Final = (
    "INSERT INTO event_outbox (tenant_id, device_id, type, data)"
    " SELECT t.tenant_id, t.device_id, t.type, t.data::jsonb"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY"
    " AS t(tenant_id, device_id, type, data, n)"
    " ORDER BY t.n"  # ids are drawn in this order: the order the caller gave
)
_INSERT_ONE: Final = (
    "INSERT INTO event_outbox (tenant_id, device_id, type, data)"
    " VALUES ($1, $2, $3, $4::jsonb) RETURNING event_id"
)


def _body(type_: str, data: Mapping[str, Any]) -> str:
    if type_ not in _EMITTABLE:
        raise ValueError(f"unknown event type {type_!r}")
    return json.dumps(data, separators=(",", ":"), default=str)


async def emit(
    conn: Conn,
    tenant_id: str,
    type_: str,
    data: Mapping[str, Any],
    device_id: str | None = None,
) -> uuid.UUID:
    """One event, in ``conn``'s transaction; returns its ``event_id`` (the id a receiver sees)."""
    event_id: uuid.UUID = await conn.fetchval(
        _INSERT_ONE, tenant_id, device_id, type_, _body(type_, data)
    )
    return event_id


async def emit_many(
    conn: Conn,
    events: Iterable[tuple[str, str | None, str, Mapping[str, Any]]],
) -> int:
    """Events ``(tenant_id, device_id, type, data)`` in one statement, in order (ids ascend in
    the order given); returns how many."""
    tenants: list[str] = []
    devices: list[str | None] = []
    types: list[str] = []
    bodies: list[str] = []
    for tenant_id, device_id, type_, data in events:
        bodies.append(_body(type_, data))
        tenants.append(tenant_id)
        devices.append(device_id)
        types.append(type_)
    if tenants:
        await conn.execute(_INSERT, tenants, devices, types, bodies)
    return len(tenants)
