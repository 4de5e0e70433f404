"""The embedded PostgreSQL keeps what it acknowledged: admin writes and flushed activity survive a
crash of the server, and the default server is configured to survive one of the machine too.

A process crash alone cannot show the machine-crash half (the kernel keeps what was written), so
the settings that decide it are checked directly; the crash test catches the process-crash half,
which ``synchronous_commit=off`` used to lose (blocks acknowledged in the last ~0.2 s were gone).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import Stores
from reliability_log import record

from gatekeeper.edge.activity.recorder import ActivityRecorder
from gatekeeper.edge.activity.writer import PostgresWriter
from gatekeeper.runtime.embedded import EmbeddedPostgres
from gatekeeper.store import edge_writes as store
from gatekeeper.store.clients import open_pg_pool
from gatekeeper.store.migrate import migrate

ATTRS = ("CrewCheck", "3.2.1", "Android", "14", "Samsung", "SM-T636B")
DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")
BLOCKS = 20
DEVICES = 600  # three pieces of a flush


@pytest.fixture
def durable_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """The embedded default, exactly as ``gatekeeper up`` starts it (no arguments)."""
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def migrated(durable_postgres: EmbeddedPostgres) -> AsyncIterator[EmbeddedPostgres]:
    await migrate(durable_postgres.url)
    yield durable_postgres


async def _settings(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        return {name: await conn.fetchval(f"SHOW {name}") for name in DURABILITY}
    finally:
        await conn.close()


async def test_the_embedded_default_is_durable(durable_postgres: EmbeddedPostgres) -> None:
    assert durable_postgres.durable
    assert await _settings(durable_postgres.url) == dict.fromkeys(DURABILITY, "on")


async def test_the_test_servers_fast_mode_is_an_explicit_choice(stores: Stores) -> None:
    """The shared test server trades durability for speed, and says so."""
    assert not stores.postgres.durable
    assert await _settings(stores.pg_url) == dict.fromkeys(DURABILITY, "off")


def _crash(server: EmbeddedPostgres, how: str) -> None:
    if how == "sigkill":
        server.kill()  # the postmaster and every backend, at once
    else:
        server.stop_immediate()


@pytest.mark.parametrize("how", ["sigkill", "immediate"])
async def test_acknowledged_writes_survive_a_postgres_crash(
    how: str,
    migrated: EmbeddedPostgres,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    pool = await open_pg_pool(migrated.url, min_size=1, max_size=4)
    try:
        recorder = ActivityRecorder(
            PostgresWriter(pool),
            flush_interval=3600.0,
            flush_max_devices=5_000,
            max_pending=10_000,
            retry_max_seconds=1.0,
        )
        for i in range(DEVICES):
            recorder.record((tenant, f"seen-{i:04d}"), ATTRS, i % 2 == 0)
        assert await recorder.flush_once() == DEVICES
        assert recorder.flushed_rows == DEVICES and recorder.pending == 0
        # The blocks last, closest to the crash: the most likely to be lost.
        for i in range(BLOCKS):
            row = await store.set_blocked(
                pool, redis_client, tenant, f"blocked-{i:02d}", True, "lost", create=True
            )
            assert row is not None and row["is_blocked"]
    finally:
        pool.terminate()
    # At once: an acknowledgement that only sat in the server's memory is lost right here.
    started = time.monotonic()
    _crash(migrated, how)

    restarted = EmbeddedPostgres(migrated.data_dir, port=migrated.port)
    restarted.start()
    recovered = time.monotonic() - started
    try:
        conn = await asyncpg.connect(restarted.url)
        try:
            still_blocked = await conn.fetchval(
                "SELECT count(*) FROM devices WHERE tenant_id = $1 AND is_blocked"
                " AND device_id LIKE 'blocked-%'",
                tenant,
            )
            seen = await conn.fetchval(
                "SELECT count(*) FROM device_activity WHERE tenant_id = $1"
                " AND device_id LIKE 'seen-%'"
                " AND last_active_at IS NOT NULL",
                tenant,
            )
            histories = await conn.fetchval(
                "SELECT count(DISTINCT device_id) FROM device_history WHERE tenant_id = $1", tenant
            )
        finally:
            await conn.close()
    finally:
        restarted.stop()
    lost = (BLOCKS - still_blocked) + (DEVICES - seen)
    record(
        f"postgres.durability.{how}",
        acked_writes=BLOCKS + DEVICES,
        lost_writes=lost,
        recover_seconds=round(recovered, 2),
    )
    assert still_blocked == BLOCKS
    assert seen == DEVICES
    assert histories == DEVICES  # each first sighting's history record came back with it
