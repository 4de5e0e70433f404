"""Stale devices (issue 13): the tenant settings route, the stale report, and the daily job that
deletes unblocked devices inactive longer than ``staleDeviceDays``, with a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import Stores
from test_admin_helpers import Api, admin_settings, running_api

from admin_api.edgesync import EDGE_SYNC
from admin_api.stalejob import JOB_NAME, StaleDeviceJob
from gatekeeper.domain import edgeview
from gatekeeper.types import ManualClock

pytestmark = pytest.mark.timeout(60)

DAY = 86_400.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def stale_api(
    stores: Stores,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
    clock: ManualClock,
) -> AsyncIterator[Api]:
    settings = admin_settings(stores.pg_url, stores.redis_url)
    async with running_api(settings, pg_pool, redis_client, tenant, clock=clock) as client:
        yield client


def _job(api: Api, pool: asyncpg.Pool, redis: aioredis.Redis, clock: ManualClock) -> StaleDeviceJob:
    return StaleDeviceJob(pool, redis, api.app[EDGE_SYNC], clock=clock, batch_size=2)


async def _set_days(api: Api, days: int | None, tenant: str | None = None) -> None:
    response = await api.call(
        "PUT", api.path("/settings", tenant), json={"staleDeviceDays": days}, tenant=tenant
    )
    assert response.status == 200, await response.text()


async def _active(pool: asyncpg.Pool, tenant: str, device: str, days_ago: float) -> None:
    """Mark the device last active ``days_ago`` days before the real now."""
    await pool.execute(
        "UPDATE device_activity SET last_active_at = now() - make_interval(secs => $3)"
        " WHERE tenant_id = $1 AND device_id = $2",
        tenant,
        device,
        days_ago * DAY,
    )


async def _report(api: Api, query: str = "") -> dict[str, Any]:
    response = await api.call("GET", api.path("/settings/stale-report") + query)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def _ids(pool: asyncpg.Pool, tenant: str) -> set[str]:
    rows = await pool.fetch("SELECT device_id FROM devices WHERE tenant_id = $1", tenant)
    return {r[0] for r in rows}


async def test_the_job_deletes_what_the_report_listed_and_nothing_else(
    stale_api: Api, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    api, tenant = stale_api, stale_api.tenant
    other = f"{tenant}-other"
    for name in ("never", "old", "old-keyed", "old-off", "recent", "old-blocked", "old-shadow"):
        await api.create_device(name)
    key = (
        await (await api.call("POST", api.device_path("old-keyed", "/connections/reset"))).json()
    )["apiKey"]
    assert key
    digests = [
        r[0]
        for r in await pg_pool.fetch(
            "SELECT digest FROM api_keys WHERE tenant_id = $1 AND device_id = 'old-keyed'", tenant
        )
    ]
    off = await api.call("PUT", api.device_path("old-off"), json={"isEnabled": False})
    assert off.status == 200
    await api.call("POST", api.device_path("old-blocked", "/block"))
    await api.call("POST", api.device_path("old-shadow", "/block"), json={"mode": "shadow"})
    for name in ("old", "old-keyed", "old-off", "old-blocked", "old-shadow"):
        await _active(pg_pool, tenant, name, days_ago=100)
    # Another tenant, without the setting, with a device as stale as any.
    await pg_pool.execute(
        "INSERT INTO devices (tenant_id, device_id, created_at) VALUES ($1, 'o-1', now())", other
    )
    await _active(pg_pool, other, "o-1", days_ago=100)

    await _set_days(api, 30)
    clock.advance(31 * DAY)  # "never" was created 31 days ago now
    await _active(pg_pool, tenant, "recent", days_ago=-5)  # 26 days before the clock's now

    report = await _report(api)
    assert report["staleDeviceDays"] == 30 and report["truncated"] is False
    expected = ["never", "old", "old-keyed", "old-off"]
    assert report["deviceIds"] == expected and report["count"] == 4

    done = await _job(api, pg_pool, redis_client, clock).run_once(force=True)
    assert done is not None and done[tenant] == 4
    assert await _ids(pg_pool, tenant) == {"recent", "old-blocked", "old-shadow"}
    assert await _ids(pg_pool, other) == {"o-1"}
    # Keys revoked in Postgres and gone from the edge view; the disabled device left its set.
    revoked = await pg_pool.fetch(
        "SELECT revoked_at FROM api_keys WHERE tenant_id = $1 AND device_id = 'old-keyed'", tenant
    )
    assert revoked and all(r[0] is not None for r in revoked)
    for digest in digests:
        assert not await redis_client.hexists(edgeview.KEYS_HASH, digest.hex())
    member = edgeview.member(tenant, "old-off")
    assert not await redis_client.sismember(edgeview.DISABLED_SET, member)
    # One audit entry for the tenant, with the count.
    entries = await (
        await api.call("GET", api.path("/audit") + "?action=device.stale-delete")
    ).json()
    assert len(entries) == 1
    assert entries[0]["targetType"] == "tenant" and entries[0]["targetId"] == tenant
    assert entries[0]["actor"] == "system:stale-devices"
    assert entries[0]["details"]["deleted"] == 4 and entries[0]["details"]["staleDeviceDays"] == 30
    assert (await _report(api))["count"] == 0


async def test_the_job_runs_once_a_day_and_one_replica_at_a_time(
    stale_api: Api, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    api = stale_api
    await pg_pool.execute("DELETE FROM admin_jobs WHERE name = $1", JOB_NAME)
    job = _job(api, pg_pool, redis_client, clock)
    async with pg_pool.acquire() as other_replica:
        assert await other_replica.fetchval("SELECT pg_try_advisory_lock($1)", 0x6A7E_57A1)
        try:
            assert await job.run_once(force=True) is None  # another replica is running it
        finally:
            await other_replica.execute("SELECT pg_advisory_unlock($1)", 0x6A7E_57A1)
    assert await job.run_once() is not None
    clock.advance(DAY - 120)
    assert await job.run_once() is None  # ran less than a day ago
    clock.advance(120)
    assert await job.run_once() is not None


async def test_settings_default_to_null_and_round_trip(stale_api: Api) -> None:
    api = stale_api
    got = await (await api.call("GET", api.path("/settings"))).json()
    assert got == {"staleDeviceDays": None, "updatedAt": None}
    await _set_days(api, 90)
    got = await (await api.call("GET", api.path("/settings"))).json()
    assert got["staleDeviceDays"] == 90 and got["updatedAt"]
    await _set_days(api, None)
    assert (await (await api.call("GET", api.path("/settings"))).json())["staleDeviceDays"] is None
    entries = await (await api.call("GET", api.path("/audit") + "?action=tenant.settings")).json()
    assert [e["details"] for e in entries] == [{"staleDeviceDays": None}, {"staleDeviceDays": 90}]
    report = await _report(api)
    assert report == {
        "staleDeviceDays": None,
        "cutoff": None,
        "count": 0,
        "deviceIds": [],
        "truncated": False,
    }
    assert (await _report(api, "?staleDeviceDays=7"))["staleDeviceDays"] == 7


@pytest.mark.parametrize(
    "body",
    [
        {"staleDeviceDays": 0},
        {"staleDeviceDays": -1},
        {"staleDeviceDays": 36_501},
        {"staleDeviceDays": "30"},
        {"staleDeviceDays": 1.5},
        {},
        {"staleDeviceDays": 30, "other": 1},
    ],
)
async def test_invalid_settings_are_422(stale_api: Api, body: dict[str, Any]) -> None:
    response = await stale_api.call("PUT", stale_api.path("/settings"), json=body)
    assert response.status == 422
    assert (await (await stale_api.call("GET", stale_api.path("/settings"))).json())[
        "staleDeviceDays"
    ] is None


@pytest.mark.parametrize("query", ["?staleDeviceDays=0", "?staleDeviceDays=x", "?days=3"])
async def test_an_invalid_report_query_is_400(stale_api: Api, query: str) -> None:
    response = await stale_api.call("GET", stale_api.path("/settings/stale-report") + query)
    assert response.status == 400


@pytest.mark.parametrize(
    ("method", "suffix", "scope"),
    [
        ("GET", "/settings", "Device.Write"),
        ("PUT", "/settings", "Device.Read"),
        ("GET", "/settings/stale-report", "Device.Write"),
    ],
)
async def test_settings_routes_refuse_other_tenants_and_scopes(
    stale_api: Api, method: str, suffix: str, scope: str
) -> None:
    api = stale_api
    body = {"staleDeviceDays": 30} if method == "PUT" else None
    other = await api.call(method, api.path(suffix, "someone-else"), json=body)
    assert other.status == 403
    wrong_scope = await api.call(method, api.path(suffix), json=body, scopes=[scope])
    assert wrong_scope.status == 403
    assert (await (await api.call("GET", api.path("/settings"))).json())["staleDeviceDays"] is None
