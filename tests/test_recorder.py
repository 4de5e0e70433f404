"""The activity recorder driven directly against a real Postgres: ordering, bounds, concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import asyncpg
import pytest
from conftest import Stores
from faultproxy import FaultProxy

from gatekeeper.edge import metrics
from gatekeeper.edge.activity.recorder import ActivityRecorder
from gatekeeper.edge.activity.writer import PostgresWriter
from gatekeeper.store.clients import open_pg_pool
from gatekeeper.types import SYSTEM_CLOCK, Clock, ManualClock

ATTRS = ("App", "1.0", "Android", "14", "Acme", "X1")


def recorder(
    pool: asyncpg.Pool,
    *,
    flush_max: int = 5_000,
    max_pending: int = 50_000,
    connections: int = 2,
    touch_interval: float = 0.0,
    clock: Clock = SYSTEM_CLOCK,
) -> ActivityRecorder:
    return ActivityRecorder(
        PostgresWriter(pool, connections=connections),
        flush_interval=3600.0,
        flush_max_devices=flush_max,
        max_pending=max_pending,
        retry_max_seconds=1.0,
        touch_interval=touch_interval,
        clock=clock,
    )


def counter(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


async def device(pool: asyncpg.Pool, tenant: str, device_id: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT * FROM devices_with_activity WHERE tenant_id = $1 AND device_id = $2",
        tenant,
        device_id,
    )
    assert row is not None
    return row


async def history(pool: asyncpg.Pool, tenant: str, device_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM device_history WHERE tenant_id = $1 AND device_id = $2"
        " ORDER BY recorded_at, id",
        tenant,
        device_id,
    )


async def test_older_batch_flushed_after_newer_does_not_move_timestamps_back(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """Two workers saw one device; the one that saw it earlier flushes last."""
    clock = ManualClock()
    early, late = recorder(pg_pool, clock=clock), recorder(pg_pool, clock=clock)
    early.record((tenant, "dev"), ATTRS, True)
    clock.advance(0.05)
    late.record((tenant, "dev"), ("App", "2.0", "Android", "14", "Acme", "X1"), True)
    assert await late.flush_once() == 1
    newest = await device(pg_pool, tenant, "dev")
    assert await early.flush_once() == 1
    after = await device(pg_pool, tenant, "dev")
    assert after["last_active_at"] == newest["last_active_at"]
    assert after["last_data_upload_at"] == newest["last_data_upload_at"]
    assert after["application_version"] == "2.0"  # the older sighting is not applied
    # ...but the earlier first sighting is kept as the first seen time.
    assert after["first_seen_at"] < newest["first_seen_at"]
    records = await history(pg_pool, tenant, "dev")
    assert [json.loads(r["current"])["applicationVersion"] for r in records] == ["2.0"]


async def test_buffer_bound_drops_and_counts_new_devices_but_existing_ones_coalesce(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    rec = recorder(pg_pool, flush_max=5, max_pending=5)
    dropped_before = counter("gatekeeper_activity_dropped_total")
    for i in range(8):
        rec.record((tenant, f"d{i}"), ATTRS, False)
    assert rec.pending == 5
    assert rec.dropped == 3
    assert counter("gatekeeper_activity_dropped_total") - dropped_before == 3
    # A device already in the buffer still coalesces: no drop, its activity moves on.
    time_before = time.time()
    rec.record((tenant, "d0"), ATTRS, True)
    assert rec.pending == 5
    assert rec.dropped == 3
    assert await rec.flush_once() == 5
    rows = await pg_pool.fetch(
        "SELECT device_id, last_data_upload_at FROM devices_with_activity"
        " WHERE tenant_id = $1 ORDER BY device_id",
        tenant,
    )
    assert [r["device_id"] for r in rows] == ["d0", "d1", "d2", "d3", "d4"]
    assert rows[0]["last_data_upload_at"].timestamp() >= time_before - 0.001


async def test_drain_flushes_everything_in_several_batches(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    rec = recorder(pg_pool, flush_max=1_000, max_pending=10_000)
    for i in range(2_500):
        rec.record((tenant, f"d{i:04d}"), ATTRS, False)
    assert await rec.drain(time.monotonic() + 30)
    assert rec.pending == 0
    assert rec.flushed_rows == 2_500
    count = await pg_pool.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", tenant)
    assert count == 2_500


async def test_concurrent_flushers_of_the_same_devices_neither_deadlock_nor_repeat_history(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """Four workers saw the same 3,000 devices (batches split over connections too)."""
    workers = [recorder(pg_pool, connections=2) for _ in range(4)]
    for n, rec in enumerate(workers):
        order = range(3_000) if n % 2 else reversed(range(3_000))
        for i in order:
            rec.record((tenant, f"d{i:04d}"), ATTRS, n == 3)
    written = await asyncio.wait_for(
        asyncio.gather(*(rec.flush_once() for rec in workers)), timeout=60
    )
    assert written == [3_000] * 4
    counts = await pg_pool.fetch(
        "SELECT count(*) AS n FROM device_history WHERE tenant_id = $1 GROUP BY device_id", tenant
    )
    assert len(counts) == 3_000
    assert {r["n"] for r in counts} == {1}
    uploads = await pg_pool.fetchval(
        "SELECT count(*) FROM device_activity WHERE tenant_id = $1"
        " AND last_data_upload_at IS NOT NULL",
        tenant,
    )
    assert uploads == 3_000


async def test_changes_between_flushes_each_get_a_record_with_their_own_time(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    clock = ManualClock()
    rec = recorder(pg_pool, clock=clock)
    rec.record((tenant, "dev"), ATTRS, False)
    first = clock.wall()
    clock.advance(0.02)
    rec.record((tenant, "dev"), ("App", "1.1", None, None, None, None), False)  # missing = same
    second = clock.wall()
    clock.advance(0.02)
    rec.record((tenant, "dev"), ("App", "1.1", "Android", "14", "Acme", "X1"), False)  # no change
    clock.advance(0.2)
    flush_started = clock.wall()
    await rec.flush_once()
    records = await history(pg_pool, tenant, "dev")
    assert len(records) == 2
    assert records[0]["previous"] is None
    assert records[1]["changed_fields"] == ["applicationVersion"]
    assert json.loads(records[1]["previous"])["applicationVersion"] == "1.0"
    assert json.loads(records[1]["current"]) == {
        "application": "App",
        "applicationVersion": "1.1",
        "os": "Android",
        "osVersion": "14",
        "manufacturer": "Acme",
        "model": "X1",
    }
    # Each record carries the time its request was seen (to Postgres's microsecond), not the
    # flush's.
    assert records[0]["recorded_at"].timestamp() == pytest.approx(first, abs=1e-6)
    assert records[1]["recorded_at"].timestamp() == pytest.approx(second, abs=1e-6)
    assert second < flush_started - 0.1
    row = await device(pg_pool, tenant, "dev")
    assert row["application_version"] == "1.1"
    assert row["os"] == "Android"


async def test_failed_batch_goes_back_and_merges_with_newer_activity(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    closed = await asyncpg.create_pool(dsn=None, host="127.0.0.1", port=1, min_size=0, max_size=1)
    rec = recorder(closed)
    rec.record((tenant, "dev"), ATTRS, False)
    try:
        try:
            await rec.flush_once()
        except OSError:
            pass
        else:
            raise AssertionError("a flush to a closed port must fail")
    finally:
        await closed.close()
    assert rec.pending == 1
    rec.record((tenant, "dev"), ("App", "2.0", None, None, None, None), True)
    rec._sink = PostgresWriter(pg_pool)  # the same buffer, now against a reachable Postgres
    assert await rec.flush_once() == 1
    row = await device(pg_pool, tenant, "dev")
    assert (row["application_version"], row["os"]) == ("2.0", "Android")
    assert row["last_data_upload_at"] is not None
    assert [r["changed_fields"] for r in await history(pg_pool, tenant, "dev")] == [
        ["application", "applicationVersion", "os", "osVersion", "manufacturer", "model"],
        ["applicationVersion"],
    ]


async def test_deleting_a_device_deletes_its_history(pg_pool: asyncpg.Pool, tenant: str) -> None:
    """Migration 0003 keeps the cascade of the foreign key it replaced."""
    rec = recorder(pg_pool)
    rec.record((tenant, "gone"), ATTRS, False)
    rec.record((tenant, "kept"), ATTRS, False)
    await rec.flush_once()
    await pg_pool.execute("DELETE FROM devices WHERE tenant_id = $1 AND device_id = 'gone'", tenant)
    assert await history(pg_pool, tenant, "gone") == []
    assert len(await history(pg_pool, tenant, "kept")) == 1


async def test_pure_touches_are_deferred_but_news_is_not(
    pg_pool: asyncpg.Pool,
    tenant: str,
) -> None:
    clock = ManualClock()
    rec = recorder(pg_pool, touch_interval=0.4, clock=clock)
    for name in ("quiet", "changes", "uploads"):
        rec.record((tenant, name), ATTRS, False)
    assert await rec.flush_once() == 3  # first sightings are news
    first = {name: await device(pg_pool, tenant, name) for name in ("quiet", "changes", "uploads")}

    clock.advance(0.01)
    rec.record((tenant, "quiet"), ATTRS, False)  # only "active again"
    rec.record((tenant, "changes"), ("App", "2.0", None, None, None, None), False)
    rec.record((tenant, "uploads"), ATTRS, True)
    assert await rec.flush_once() == 2  # the touch waits
    assert (await device(pg_pool, tenant, "quiet"))["last_active_at"] == first["quiet"][
        "last_active_at"
    ]
    assert (await device(pg_pool, tenant, "changes"))["application_version"] == "2.0"
    assert (await device(pg_pool, tenant, "uploads"))["last_data_upload_at"] is not None
    assert rec.pending == 1

    clock.advance(0.45)  # past the touch interval, the touch goes out
    assert await rec.flush_once() == 1
    assert (await device(pg_pool, tenant, "quiet"))["last_active_at"] > first["quiet"][
        "last_active_at"
    ]


async def test_drain_writes_deferred_touches_too(pg_pool: asyncpg.Pool, tenant: str) -> None:
    rec = ActivityRecorder(
        PostgresWriter(pg_pool),
        flush_interval=3600.0,
        flush_max_devices=5_000,
        max_pending=50_000,
        retry_max_seconds=1.0,
        touch_interval=3600.0,
    )
    rec.record((tenant, "d"), ATTRS, False)
    await rec.flush_once()
    before = (await device(pg_pool, tenant, "d"))["last_active_at"]
    rec.record((tenant, "d"), ATTRS, False)
    assert await rec.flush_once() == 0
    assert await rec.drain(time.monotonic() + 5)
    assert (await device(pg_pool, tenant, "d"))["last_active_at"] > before


# --- a hung Postgres: every flush is bounded, and only commits count ---------------------------


def hung_recorder(pool: asyncpg.Pool, timeout: float) -> ActivityRecorder:
    return ActivityRecorder(
        PostgresWriter(pool, timeout=timeout),
        flush_interval=0.05,
        flush_max_devices=5_000,
        max_pending=50_000,
        retry_max_seconds=0.2,
    )


async def test_flush_to_a_hung_postgres_gives_up_in_time_and_keeps_the_batch(
    stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """Postgres accepts the connection and then says nothing (a blackhole in between): the
    flush fails after its timeout, once for the whole batch, not once per piece."""
    async with FaultProxy("127.0.0.1", stores.postgres.port) as fault:
        pool = await open_pg_pool(
            f"postgresql://postgres@127.0.0.1:{fault.port}/postgres", min_size=2, max_size=4
        )
        try:
            rec = hung_recorder(pool, timeout=0.5)
            for i in range(600):  # three pieces, two at a time
                rec.record((tenant, f"d{i:03d}"), ATTRS, False)
            flushed_before = counter("gatekeeper_activity_flushed_total")
            await fault.blackhole()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await rec.flush_once()
            elapsed = time.monotonic() - started
            assert 0.45 <= elapsed < 0.95  # one timeout: the third piece was never started
            assert rec.pending == 600 and rec.flushed_rows == 0
            assert counter("gatekeeper_activity_flushed_total") == flushed_before

            await fault.reset()  # the server answers again (on new connections)
            assert await rec.flush_once() == 600
        finally:
            pool.terminate()
    count = await pg_pool.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", tenant)
    assert count == 600


async def test_background_flusher_counts_errors_while_hung_and_catches_up(
    stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    async with FaultProxy("127.0.0.1", stores.postgres.port) as fault:
        pool = await open_pg_pool(
            f"postgresql://postgres@127.0.0.1:{fault.port}/postgres", min_size=1, max_size=4
        )
        rec = hung_recorder(pool, timeout=0.3)
        task = asyncio.create_task(rec.run())
        try:
            errors_before = counter("gatekeeper_activity_flush_errors_total")
            await fault.blackhole()
            for i in range(50):
                rec.record((tenant, f"d{i:02d}"), ATTRS, True)
            deadline = time.monotonic() + 5
            while counter("gatekeeper_activity_flush_errors_total") < errors_before + 2:
                assert time.monotonic() < deadline, "a hung flush must fail, and be retried"
                await asyncio.sleep(0.05)
            assert not rec.last_flush_ok and rec.pending == 50

            await fault.reset()
            while rec.pending or not rec.last_flush_ok:
                assert time.monotonic() < deadline + 5, "the flusher must catch up"
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            pool.terminate()
    count = await pg_pool.fetchval(
        "SELECT count(*) FROM device_activity WHERE tenant_id = $1"
        " AND last_data_upload_at IS NOT NULL",
        tenant,
    )
    assert count == 50


async def test_only_committed_pieces_count_as_flushed(pg_pool: asyncpg.Pool, tenant: str) -> None:
    """One piece of a batch commits, the other fails: the metric counts what Postgres holds,
    and the whole batch stays buffered (the sink reports all or nothing; writing the committed
    piece again is harmless)."""
    rec = recorder(pg_pool)
    for i in range(249):
        rec.record((tenant, f"a{i:03d}"), ATTRS, False)
    for i in range(251):  # sorts after the a's: the second piece, with a row Postgres refuses
        rec.record((tenant, f"b{i:03d}" if i else "b\x00poison"), ATTRS, False)
    flushed_before = counter("gatekeeper_activity_flushed_total")
    with pytest.raises(asyncpg.PostgresError):
        await rec.flush_once()
    stored = await pg_pool.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", tenant)
    assert stored == 250
    assert counter("gatekeeper_activity_flushed_total") - flushed_before == 250
    assert rec.flushed_rows == 0
    assert rec.pending == 500  # back in the buffer, for the retry


async def test_drain_gives_up_at_its_deadline_and_counts_what_it_drops(
    stores: Stores, tenant: str
) -> None:
    async with FaultProxy("127.0.0.1", stores.postgres.port) as fault:
        pool = await open_pg_pool(
            f"postgresql://postgres@127.0.0.1:{fault.port}/postgres", min_size=1, max_size=2
        )
        try:
            rec = hung_recorder(pool, timeout=5.0)  # longer than the deadline
            for i in range(10):
                rec.record((tenant, f"d{i}"), ATTRS, False)
            dropped_before = counter("gatekeeper_activity_dropped_total")
            await fault.blackhole()
            started = time.monotonic()
            assert not await rec.drain(started + 0.5)
            assert time.monotonic() - started < 1.5
            assert rec.dropped == 10
            assert counter("gatekeeper_activity_dropped_total") - dropped_before == 10
        finally:
            pool.terminate()
