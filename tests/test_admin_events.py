"""Admin-side events (issue 14): each change through the admin API leaves its event in the
outbox, written with the change; a call that changes nothing leaves none; a bulk call leaves
one per device changed."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from test_admin_helpers import Api


async def _events(pool: asyncpg.Pool, tenant: str) -> list[tuple[str, str | None, Any]]:
    rows = await pool.fetch(
        "SELECT type, device_id, data FROM event_outbox WHERE tenant_id = $1 ORDER BY id", tenant
    )
    return [(r["type"], r["device_id"], json.loads(r["data"])) for r in rows]


async def _ok(api: Api, method: str, path: str, **kwargs: Any) -> Any:
    response = await api.call(method, path, **kwargs)
    assert response.status < 300, await response.text()
    return await response.json() if response.status != 204 else None


async def test_single_changes_emit_their_events_once(
    api: Api, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    await pg_pool.execute("INSERT INTO devices (tenant_id, device_id) VALUES ($1, 'e-1')", tenant)
    await _ok(api, "POST", api.device_path("e-1", "/block"), json={"reason": "lost"})
    await _ok(api, "POST", api.device_path("e-1", "/block"), json={"reason": "lost"})  # no-op
    await _ok(api, "POST", api.device_path("e-1", "/unblock"))
    await _ok(api, "POST", api.device_path("e-1", "/connections/reset"))
    await _ok(api, "DELETE", api.device_path("e-1"))
    token = await _ok(api, "POST", api.path("/tokens"), json={"name": "ci"})
    await _ok(api, "DELETE", api.path(f"/tokens/{token['tokenId']}"))
    events = await _events(pg_pool, tenant)
    assert [(t, d) for t, d, _ in events] == [
        ("device.blocked", "e-1"),
        ("device.unblocked", "e-1"),
        ("key.reset", "e-1"),
        ("device.deleted", "e-1"),
        ("token.created", None),
        ("token.revoked", None),
    ]
    assert events[0][2] == {"deviceId": "e-1", "reason": "lost", "mode": "enforce"}
    assert events[4][2]["tokenId"] == token["tokenId"]
    assert token["token"] not in str(events)  # no secret in an event


async def test_a_bulk_block_emits_one_event_per_device_changed(
    api: Api, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    await pg_pool.execute(
        "INSERT INTO devices (tenant_id, device_id)"
        " SELECT $1, 'b-' || g FROM generate_series(1, 30) g",
        tenant,
    )
    await _ok(api, "POST", api.device_path("b-1", "/block"))
    body = {"filter": {"q": "b-"}, "reason": "recall"}
    result = await _ok(api, "POST", api.path("/devices/bulk-block"), json=body)
    assert result == {"matched": 30, "changed": 29}
    events = await _events(pg_pool, tenant)
    assert [t for t, _, _ in events] == ["device.blocked"] * 30
    assert sorted(d for _, d, _ in events[1:] if d) == sorted(f"b-{i}" for i in range(2, 31))
    await _ok(api, "POST", api.path("/devices/bulk-unblock"), json={"filter": {"q": "b-"}})
    await _ok(api, "POST", api.path("/devices/bulk-delete"), json={"filter": {"q": "b-"}})
    types = [t for t, _, _ in await _events(pg_pool, tenant)]
    assert types.count("device.unblocked") == 30
    assert types.count("device.deleted") == 30
