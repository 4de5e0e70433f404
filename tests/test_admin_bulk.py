"""Bulk block, unblock and delete, and the list's filter fields, against a real Postgres and
Valkey: what is matched and changed, what a dry run leaves alone, what reaches the edge view,
the audit entry, and validation of every filter field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from test_admin_helpers import Api, fields_of, problem

from admin_api.filters import MAX_DEVICE_IDS
from gatekeeper.domain import edgeview

_NOW = datetime.now(UTC)


async def _seed(pool: asyncpg.Pool, tenant: str) -> None:
    """Four devices: two on app version 2.1 (one a year idle), one on 3.0, one never seen."""
    rows = [
        ("old-1", "2.1", "android", "acme", _NOW - timedelta(days=400)),
        ("cur-1", "2.1", "android", "acme", _NOW - timedelta(hours=1)),
        ("cur-2", "3.0", "ios", "globex", _NOW - timedelta(hours=2)),
    ]
    await pool.execute(
        "INSERT INTO devices (tenant_id, device_id) SELECT $1, unnest($2::text[])",
        tenant,
        [r[0] for r in rows] + ["never"],
    )
    for device_id, version, os, maker, seen in rows:
        await pool.execute(
            "UPDATE device_activity SET application = 'crewcheck', application_version = $3,"
            " os = $4, manufacturer = $5, last_active_at = $6"
            " WHERE tenant_id = $1 AND device_id = $2",
            tenant,
            device_id,
            version,
            os,
            maker,
            seen,
        )


async def _bulk(api: Api, action: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    response = await api.call("POST", api.path(f"/devices/bulk-{action}"), json=body, **kwargs)
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def _blocked_ids(pool: asyncpg.Pool, tenant: str) -> set[str]:
    rows = await pool.fetch(
        "SELECT device_id FROM devices WHERE tenant_id = $1 AND is_blocked", tenant
    )
    return {r[0] for r in rows}


async def _audit(api: Api) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await (await api.call("GET", api.path("/audit"))).json()
    return entries


async def test_bulk_block_by_version_blocks_in_postgres_and_the_edge_view_and_audits_once(
    api: Api, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await _seed(pg_pool, api.tenant)
    body = {"filter": {"applicationVersion": "2.1"}, "reason": "recall 2.1"}
    assert await _bulk(api, "block", body) == {"matched": 2, "changed": 2}
    assert await _blocked_ids(pg_pool, api.tenant) == {"old-1", "cur-1"}
    for device_id in ("old-1", "cur-1"):
        member = edgeview.member(api.tenant, device_id)
        assert await redis_client.sismember(edgeview.BLOCKED_SET, member)
    device = await (await api.call("GET", api.device_path("cur-1"))).json()
    assert device["isBlocked"] and device["blockReason"] == "recall 2.1"
    [entry] = await _audit(api)
    assert entry["action"] == "device.bulk-block" and entry["reason"] == "recall 2.1"
    assert entry["details"] == {"filter": body["filter"], "matched": 2, "changed": 2}
    # Again: both match, none changes, and the first reason stays.
    again = {"filter": {"applicationVersion": "2.1"}, "reason": "other"}
    assert await _bulk(api, "block", again) == {"matched": 2, "changed": 0}
    device = await (await api.call("GET", api.device_path("cur-1"))).json()
    assert device["blockReason"] == "recall 2.1"


async def test_bulk_unblock_by_ids_and_filters_combine(
    api: Api, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await _seed(pg_pool, api.tenant)
    assert await _bulk(api, "block", {"filter": {"blocked": "all"}}) == {
        "matched": 4,
        "changed": 4,
    }
    body = {"filter": {"deviceIds": ["old-1", "cur-2", "nope"], "os": "android"}}
    assert await _bulk(api, "unblock", body) == {"matched": 1, "changed": 1}
    assert await _blocked_ids(pg_pool, api.tenant) == {"cur-1", "cur-2", "never"}
    member = edgeview.member(api.tenant, "old-1")
    assert not await redis_client.sismember(edgeview.BLOCKED_SET, member)
    device = await (await api.call("GET", api.device_path("old-1"))).json()
    assert device["blockedAt"] is None and device["blockReason"] is None


async def test_last_active_filters_count_a_never_seen_device_by_its_creation(
    api: Api, pg_pool: asyncpg.Pool
) -> None:
    await _seed(pg_pool, api.tenant)
    cut = (_NOW - timedelta(days=30)).isoformat()
    idle = await _bulk(api, "block", {"filter": {"lastActiveBefore": cut}, "dryRun": True})
    assert idle == {"matched": 1, "changed": 1}  # old-1; "never" was created just now
    recent = await _bulk(api, "block", {"filter": {"lastActiveAfter": cut}, "dryRun": True})
    assert recent == {"matched": 3, "changed": 3}


async def test_dry_run_changes_nothing_and_is_not_audited(
    api: Api, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await _seed(pg_pool, api.tenant)
    await _bulk(api, "block", {"filter": {"deviceIds": ["cur-2"]}})
    before_audit = await _audit(api)
    members = await redis_client.smembers(edgeview.BLOCKED_SET)
    for action, expected in (
        ("block", {"matched": 4, "changed": 3}),
        ("unblock", {"matched": 4, "changed": 1}),
        ("delete", {"matched": 4, "changed": 3}),
    ):
        body = {"filter": {"blocked": "all"}, "dryRun": True}
        assert await _bulk(api, action, body) == expected
    assert await _blocked_ids(pg_pool, api.tenant) == {"cur-2"}
    count = await pg_pool.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", api.tenant)
    assert count == 4
    assert await redis_client.smembers(edgeview.BLOCKED_SET) == members
    assert await _audit(api) == before_audit


async def test_bulk_delete_never_deletes_blocked_devices_and_revokes_keys(
    api: Api, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await _seed(pg_pool, api.tenant)
    reset = await api.call("POST", api.device_path("cur-1", "/connections/reset"))
    assert reset.status == 200
    digest = await pg_pool.fetchval(
        "SELECT digest FROM api_keys WHERE tenant_id = $1 AND device_id = 'cur-1'", api.tenant
    )
    assert await redis_client.hexists(edgeview.KEYS_HASH, digest.hex())
    disabled = await api.call("PUT", api.device_path("old-1"), json={"isEnabled": False})
    assert disabled.status == 200
    await _bulk(api, "block", {"filter": {"deviceIds": ["cur-2"]}})
    result = await _bulk(api, "delete", {"filter": {"blocked": "all"}, "reason": "cleanup"})
    assert result == {"matched": 4, "changed": 3}
    left = await pg_pool.fetch("SELECT device_id FROM devices WHERE tenant_id = $1", api.tenant)
    assert [r[0] for r in left] == ["cur-2"]
    revoked = await pg_pool.fetchval("SELECT revoked_at FROM api_keys WHERE digest = $1", digest)
    assert revoked is not None
    assert not await redis_client.hexists(edgeview.KEYS_HASH, digest.hex())
    member = edgeview.member(api.tenant, "old-1")
    assert not await redis_client.sismember(edgeview.DISABLED_SET, member)
    assert (await _audit(api))[0]["action"] == "device.bulk-delete"


async def test_bulk_acts_on_its_own_tenant_only(
    api: Api, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    other = f"{tenant}-other"
    await _seed(pg_pool, api.tenant)
    await _seed(pg_pool, other)
    assert await _bulk(api, "block", {"filter": {"blocked": "all"}}) == {
        "matched": 4,
        "changed": 4,
    }
    assert await _bulk(api, "delete", {"filter": {"blocked": "all"}}) == {
        "matched": 4,
        "changed": 0,
    }
    assert await _blocked_ids(pg_pool, other) == set()
    count = await pg_pool.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", other)
    assert count == 4


async def test_device_ids_up_to_the_cap_are_accepted_beyond_it_422(api: Api) -> None:
    ids = [f"device-{i:06d}-{'x' * 20}" for i in range(MAX_DEVICE_IDS)]  # > 64 KiB of JSON
    body = {"filter": {"deviceIds": ids}, "dryRun": True}
    assert await _bulk(api, "block", body) == {"matched": 0, "changed": 0}
    too_many = {"filter": {"deviceIds": [*ids, "one-more"]}}
    response = await api.call("POST", api.path("/devices/bulk-block"), json=too_many)
    assert fields_of(await problem(response, 422)) == {"filter.deviceIds"}


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        ({}, {"filter"}),
        ({"filter": {}}, {"filter"}),
        ({"filter": {"q": ""}}, {"filter.q"}),
        ({"filter": {"colour": "red"}}, {"filter.colour"}),
        ({"filter": {"blocked": "some"}}, {"filter.blocked"}),
        ({"filter": {"os": 7}}, {"filter.os"}),
        ({"filter": {"model": "x" * 257}}, {"filter.model"}),
        ({"filter": {"q": "a\x00b"}}, {"filter.q"}),
        ({"filter": {"lastActiveBefore": "yesterday"}}, {"filter.lastActiveBefore"}),
        ({"filter": {"lastActiveAfter": "2026-02-30T00:00:00Z"}}, {"filter.lastActiveAfter"}),
        ({"filter": {"deviceIds": ["has space"]}}, {"filter.deviceIds[0]"}),
        ({"filter": {"deviceIds": "dev"}}, {"filter.deviceIds"}),
        ({"filter": {"blocked": "all"}, "dryRun": "yes"}, {"dryRun"}),
        ({"filter": {"blocked": "all"}, "force": True}, {"force"}),
    ],
)
@pytest.mark.parametrize("action", ["block", "unblock", "delete"])
async def test_bulk_rejects_invalid_filters_naming_the_field(
    api: Api, pg_pool: asyncpg.Pool, action: str, body: Any, bad: set[str]
) -> None:
    await _seed(pg_pool, api.tenant)
    response = await api.call("POST", api.path(f"/devices/bulk-{action}"), json=body)
    assert fields_of(await problem(response, 422)) == bad
    assert await _blocked_ids(pg_pool, api.tenant) == set()


async def _listed(api: Api, query: str) -> list[str]:
    response = await api.call("GET", api.path("/devices") + "?" + query)
    assert response.status == 200, await response.text()
    return [d["deviceId"] for d in await response.json()]


async def test_the_list_takes_the_same_filter_fields(api: Api, pg_pool: asyncpg.Pool) -> None:
    await _seed(pg_pool, api.tenant)
    assert await _listed(api, "applicationVersion=2.1") == ["cur-1", "old-1"]
    assert await _listed(api, "os=ios&manufacturer=globex") == ["cur-2"]
    assert await _listed(api, "application=crewcheck&model=none") == []
    cut = (_NOW - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await _listed(api, f"lastActiveBefore={cut}") == ["old-1"]
    assert await _listed(api, f"lastActiveAfter={cut}&q=cur") == ["cur-1", "cur-2"]
    # The bulk call with the same filter matches exactly what the list showed.
    result = await _bulk(
        api, "block", {"filter": {"lastActiveAfter": cut, "q": "cur"}, "dryRun": True}
    )
    assert result["matched"] == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("lastActiveBefore=yesterday", "query.lastActiveBefore"),
        ("lastActiveAfter=2026-02-30T00:00:00Z", "query.lastActiveAfter"),
        ("model=" + "x" * 257, "query.model"),
        ("deviceIds=a", "query.deviceIds"),
    ],
)
async def test_the_list_refuses_bad_filter_values(api: Api, query: str, field: str) -> None:
    response = await api.call("GET", api.path("/devices") + "?" + query)
    assert fields_of(await problem(response, 400)) == {field}


async def test_bulk_block_enforces_shadow_blocks_and_bulk_unblock_clears_them(
    api: Api, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await _seed(pg_pool, api.tenant)
    shadow = await api.call(
        "POST", api.device_path("cur-1", "/block"), json={"mode": "shadow", "reason": "watch"}
    )
    assert shadow.status == 200
    member = edgeview.member(api.tenant, "cur-1")
    assert await redis_client.sismember(edgeview.SHADOW_SET, member)
    body = {"filter": {"applicationVersion": "2.1"}, "reason": "recall"}
    dry = await _bulk(api, "block", {**body, "dryRun": True})
    assert dry == {"matched": 2, "changed": 2}
    assert await _bulk(api, "block", body) == {"matched": 2, "changed": 2}
    device = await (await api.call("GET", api.device_path("cur-1"))).json()
    assert device["blockMode"] == "enforce" and device["blockReason"] == "watch"
    assert await redis_client.sismember(edgeview.BLOCKED_SET, member)
    assert not await redis_client.sismember(edgeview.SHADOW_SET, member)
    await api.call("POST", api.device_path("cur-2", "/block"), json={"mode": "shadow"})
    result = await _bulk(api, "unblock", {"filter": {"blocked": "only"}})
    assert result == {"matched": 3, "changed": 3}
    assert await _blocked_ids(pg_pool, api.tenant) == set()
    for device_id in ("cur-1", "cur-2", "old-1"):
        member = edgeview.member(api.tenant, device_id)
        assert not await redis_client.sismember(edgeview.SHADOW_SET, member)
        assert not await redis_client.sismember(edgeview.BLOCKED_SET, member)
    device = await (await api.call("GET", api.device_path("cur-2"))).json()
    assert device["blockMode"] is None
