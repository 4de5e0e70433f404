"""Device activity through a running proxy: registration, coalescing, history, outages, drain."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from conftest import EdgeFactory, Stores

from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.embedded import EmbeddedPostgres
from gatekeeper.store.clients import open_pg_pool

HEADERS = {
    "X-App-Name": "CrewCheck",
    "X-App-Version": "3.2.1",
    "X-OS-Name": "Android",
    "X-OS-Version": "14",
    "X-Device-Manufacturer": "Samsung",
    "X-Device-Model": "SM-T636B",
}
FIELDS = {
    "application": "X-App-Name",
    "applicationVersion": "X-App-Version",
    "os": "X-OS-Name",
    "osVersion": "X-OS-Version",
    "manufacturer": "X-Device-Manufacturer",
    "model": "X-Device-Model",
}
DOC = {
    "application": "CrewCheck",
    "applicationVersion": "3.2.1",
    "os": "Android",
    "osVersion": "14",
    "manufacturer": "Samsung",
    "model": "SM-T636B",
}
NEVER = 3600.0  # a flush interval long enough that the test decides when to flush


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(
    http: aiohttp.ClientSession,
    edge: EdgeServer,
    tenant: str,
    device_id: str,
    method: str = "GET",
    **headers: str,
) -> None:
    async with http.request(
        method,
        f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/items",
        headers={"X-Device-Id": device_id, **headers},
    ) as response:
        assert response.status == 200
        await response.read()


async def device(pool: asyncpg.Pool, tenant: str, device_id: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT * FROM devices_with_activity WHERE tenant_id = $1 AND device_id = $2",
        tenant,
        device_id,
    )
    assert row is not None, f"{tenant}/{device_id} not registered"
    return row


async def history(pool: asyncpg.Pool, tenant: str, device_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM device_history WHERE tenant_id = $1 AND device_id = $2"
        " ORDER BY recorded_at, id",
        tenant,
        device_id,
    )


async def metric(http: aiohttp.ClientSession, edge: EdgeServer, name: str) -> float:
    async with http.get(f"http://127.0.0.1:{edge.metrics_port}/metrics") as response:
        text = await response.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_device_registers_itself_with_every_header(
    edge_factory: EdgeFactory, pg_pool: asyncpg.Pool, http: aiohttp.ClientSession, tenant: str
) -> None:
    edge = await edge_factory(flush_interval_seconds=NEVER)
    before = time.time()
    await send(http, edge, tenant, "tablet-7", **HEADERS)
    after = time.time()
    await edge.recorder.flush_once()
    row = await device(pg_pool, tenant, "tablet-7")
    assert (
        row["application"],
        row["application_version"],
        row["os"],
        row["os_version"],
        row["manufacturer"],
        row["model"],
    ) == tuple(DOC.values())
    assert before <= row["first_seen_at"].timestamp() <= after
    assert row["last_active_at"] == row["first_seen_at"]
    assert row["last_data_upload_at"] is None
    assert row["type"] is None


async def test_a_thousand_requests_between_flushes_write_the_device_row_once(
    private_stores: Stores, edge_factory: EdgeFactory, http: aiohttp.ClientSession, tenant: str
) -> None:
    edge = await edge_factory(stores_=private_stores, flush_interval_seconds=NEVER)
    rows_sql = "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = $1"
    pool = await open_pg_pool(private_stores.pg_url, min_size=1, max_size=1)
    try:
        written_before = await pool.fetchval(rows_sql, "devices")
        for _ in range(1_000):
            await send(http, edge, tenant, "busy", **HEADERS)
        assert edge.recorder.pending == 1
        await edge.stop()  # flushes, and its connections end, so Postgres publishes their stats
        written = -1
        for _ in range(50):  # the statistics settle within a few hundred milliseconds
            await pool.execute("SELECT pg_stat_clear_snapshot()")
            written = await pool.fetchval(rows_sql, "devices") - written_before
            if written:
                break
            await asyncio.sleep(0.1)
        assert written == 1
        row = await device(pool, tenant, "busy")
        assert row["last_active_at"] > row["first_seen_at"]
        assert len(await history(pool, tenant, "busy")) == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("field", list(FIELDS))
async def test_each_kind_of_change_writes_one_history_record_at_request_time(
    edge_factory: EdgeFactory,
    pg_pool: asyncpg.Pool,
    http: aiohttp.ClientSession,
    tenant: str,
    field: str,
) -> None:
    edge = await edge_factory(flush_interval_seconds=NEVER)
    await send(http, edge, tenant, "dev", **HEADERS)
    await edge.recorder.flush_once()
    changed = {**HEADERS, FIELDS[field]: "changed-value"}
    sent_at = time.time()
    await send(http, edge, tenant, "dev", **changed)
    answered_at = time.time()
    await asyncio.sleep(0.3)  # the flush comes well after the request
    await edge.recorder.flush_once()
    records = await history(pg_pool, tenant, "dev")
    assert len(records) == 2
    change = records[1]
    assert change["changed_fields"] == [field]
    assert json.loads(change["previous"]) == DOC
    assert json.loads(change["current"]) == {**DOC, field: "changed-value"}
    assert sent_at <= change["recorded_at"].timestamp() <= answered_at


async def test_first_sighting_is_a_record_without_previous_and_no_change_adds_none(
    edge_factory: EdgeFactory, pg_pool: asyncpg.Pool, http: aiohttp.ClientSession, tenant: str
) -> None:
    edge = await edge_factory(flush_interval_seconds=NEVER)
    await send(http, edge, tenant, "dev", **HEADERS)
    await edge.recorder.flush_once()
    for _ in range(3):
        await send(http, edge, tenant, "dev", **HEADERS)
        await edge.recorder.flush_once()
    records = await history(pg_pool, tenant, "dev")
    assert len(records) == 1
    assert records[0]["previous"] is None
    assert json.loads(records[0]["current"]) == DOC
    assert records[0]["changed_fields"] == list(FIELDS)


async def test_two_tenants_with_the_same_device_id_stay_apart(
    edge_factory: EdgeFactory, pg_pool: asyncpg.Pool, http: aiohttp.ClientSession, tenant: str
) -> None:
    other = tenant + "b"
    edge = await edge_factory(flush_interval_seconds=NEVER)
    await send(http, edge, tenant, "shared-id", **HEADERS)
    await send(http, edge, other, "shared-id", "POST", **{**HEADERS, "X-Device-Model": "Other"})
    await edge.recorder.flush_once()
    mine, theirs = (
        await device(pg_pool, tenant, "shared-id"),
        await device(pg_pool, other, "shared-id"),
    )
    assert (mine["model"], theirs["model"]) == ("SM-T636B", "Other")
    assert mine["last_data_upload_at"] is None
    assert theirs["last_data_upload_at"] is not None
    assert len(await history(pg_pool, tenant, "shared-id")) == 1
    assert len(await history(pg_pool, other, "shared-id")) == 1


async def test_last_data_upload_is_set_by_post_only(
    edge_factory: EdgeFactory, pg_pool: asyncpg.Pool, http: aiohttp.ClientSession, tenant: str
) -> None:
    edge = await edge_factory(flush_interval_seconds=NEVER)
    await send(http, edge, tenant, "dev", "GET", **HEADERS)
    await edge.recorder.flush_once()
    assert (await device(pg_pool, tenant, "dev"))["last_data_upload_at"] is None
    posted_at = time.time()
    await send(http, edge, tenant, "dev", "POST", **HEADERS)
    await edge.recorder.flush_once()
    row = await device(pg_pool, tenant, "dev")
    assert row["last_data_upload_at"] is not None
    assert row["last_data_upload_at"].timestamp() >= posted_at
    await send(http, edge, tenant, "dev", "GET", **HEADERS)
    await edge.recorder.flush_once()
    after_get = await device(pg_pool, tenant, "dev")
    assert after_get["last_data_upload_at"] == row["last_data_upload_at"]
    assert after_get["last_active_at"] > row["last_active_at"]


async def test_postgres_down_keeps_forwarding_and_loses_no_device(
    private_stores: Stores, edge_factory: EdgeFactory, http: aiohttp.ClientSession, tenant: str
) -> None:
    edge = await edge_factory(
        stores_=private_stores, flush_interval_seconds=0.05, flush_retry_max_seconds=0.5
    )
    await send(http, edge, tenant, "warm-up", **HEADERS)
    for _ in range(100):  # the pool has connected and the warm-up is written
        if edge.recorder.flushed_rows == 1:
            break
        await asyncio.sleep(0.05)
    assert edge.recorder.flushed_rows == 1
    errors_before = await metric(http, edge, "gatekeeper_activity_flush_errors_total")
    data_dir, port = private_stores.postgres.data_dir, private_stores.postgres.port
    private_stores.postgres.stop()
    sent: dict[str, tuple[float, float]] = {}
    for i in range(300):
        started = time.time()
        await send(http, edge, tenant, f"offline-{i:03d}", **HEADERS)
        sent[f"offline-{i:03d}"] = (started, time.time())
    for _ in range(100):
        if await metric(http, edge, "gatekeeper_activity_flush_errors_total") > errors_before:
            break
        await asyncio.sleep(0.05)
    assert await metric(http, edge, "gatekeeper_activity_flush_errors_total") > errors_before
    assert edge.recorder.pending == 300
    assert not edge.readiness()["postgres_flushing"]

    private_stores.postgres = EmbeddedPostgres(data_dir, port=port)
    private_stores.postgres.start()
    for _ in range(200):
        if edge.recorder.pending == 0 and edge.recorder.last_flush_ok:
            break
        await asyncio.sleep(0.05)
    assert edge.recorder.pending == 0
    pool = await open_pg_pool(private_stores.pg_url, min_size=1, max_size=1)
    try:
        rows = await pool.fetch(
            "SELECT device_id, last_active_at FROM device_activity"
            " WHERE tenant_id = $1 AND device_id LIKE 'offline-%'",
            tenant,
        )
    finally:
        await pool.close()
    assert len(rows) == 300
    for row in rows:
        started, answered = sent[row["device_id"]]
        assert started <= row["last_active_at"].timestamp() <= answered


async def test_graceful_stop_flushes_pending_activity(
    edge_factory: EdgeFactory, pg_pool: asyncpg.Pool, http: aiohttp.ClientSession, tenant: str
) -> None:
    edge = await edge_factory(flush_interval_seconds=NEVER)
    for i in range(50):
        await send(http, edge, tenant, f"d{i:02d}", **HEADERS)
    assert edge.recorder.pending == 50
    await edge.stop()
    count = await pg_pool.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", tenant)
    assert count == 50
