"""The recorder's flush writes ``device.registered`` and ``device.changed`` into the event outbox
in the transaction of the rows (issue 14): one event per history record, none after a failed
flush, and a flood of 100,000 new devices gives exactly 100,000 registrations."""

from __future__ import annotations

import asyncpg
import pytest

from gatekeeper.domain.identity import Attributes
from gatekeeper.edge.activity import sql
from gatekeeper.edge.activity.pending import PendingDevice
from gatekeeper.edge.activity.writer import PostgresWriter
from gatekeeper.types import DeviceKey

_T0 = 1_700_000_000.0
_A: Attributes = ("App", "1.0", "Android", "14", "Acme", "X1")
_B: Attributes = ("App", "1.1", "Android", "14", "Acme", "X1")


async def _events(pool: asyncpg.Pool, tenant: str) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT device_id, type FROM event_outbox WHERE tenant_id = $1 ORDER BY id", tenant
    )
    return [(r[0], r[1]) for r in rows]


async def test_each_history_record_is_one_event_on_every_flush_path(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """Phase 1 (new devices, one and several sightings), the one-statement phase 2 and the
    lock-and-compare phase 2 each emit exactly one event per history record they write."""
    several = PendingDevice(_A, _T0, False, True)
    several.absorb(PendingDevice(_B, _T0 + 1, False, False))
    await sql.write_batch(
        pg_pool,
        {(tenant, "one"): PendingDevice(_A, _T0, False, True), (tenant, "two"): several},
        {},
        timeout=30,
    )
    # Per device in order (ids across devices follow the statement's plan, which is fine).
    assert sorted(await _events(pg_pool, tenant), key=lambda e: e[0]) == [
        ("one", "device.registered"),
        ("two", "device.registered"),
        ("two", "device.changed"),
    ]
    # One sighting per device: the one-statement path; a pure touch ("two" again) emits nothing.
    await sql.write_batch(
        pg_pool,
        {
            (tenant, "one"): PendingDevice(_B, _T0 + 5, False, False),
            (tenant, "two"): PendingDevice(_B, _T0 + 5, False, False),
        },
        {},
        {(tenant, "one"), (tenant, "two")},
        timeout=30,
    )
    # Several sightings of a known device: the lock-and-compare path.
    back = PendingDevice(_A, _T0 + 10, False, False)
    back.absorb(PendingDevice(_B, _T0 + 11, False, False))
    await sql.write_batch(pg_pool, {(tenant, "two"): back}, {}, {(tenant, "two")}, timeout=30)
    events = await _events(pg_pool, tenant)
    assert sorted(events[3:], key=lambda e: e[0]) == [
        ("one", "device.changed"),
        ("two", "device.changed"),
        ("two", "device.changed"),
    ]
    history = await pg_pool.fetchval(
        "SELECT count(*) FROM device_history WHERE tenant_id = $1", tenant
    )
    assert len(events) == history
    data = await pg_pool.fetchval(
        "SELECT data FROM event_outbox WHERE tenant_id = $1 AND device_id = 'one'"
        " AND type = 'device.changed'",
        tenant,
    )
    assert '"changedFields": ["applicationVersion"]' in data


async def test_a_failed_flush_leaves_no_event(pg_pool: asyncpg.Pool, tenant: str) -> None:
    """The events roll back with the rows: a piece that fails after phase 1 (here a malformed
    key digest, whose statement comes last) leaves neither devices nor events."""
    batch = {(tenant, f"d{i}"): PendingDevice(_A, _T0, False, True) for i in range(10)}
    # A KEY_USES statement with a malformed digest makes the transaction fail after phase 1.
    with pytest.raises(ValueError):
        await sql.write_batch(pg_pool, batch, {"not-hex": 1.0}, timeout=30)
    assert await _events(pg_pool, tenant) == []
    assert not await pg_pool.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", tenant)


async def test_a_flood_of_100k_registrations_gives_100k_events(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """Not timed (docs/performance.md holds the measurement): the count is exact."""
    writer = PostgresWriter(pg_pool, connections=4)
    keys: list[DeviceKey] = [(tenant, f"flood{i:06d}") for i in range(100_000)]
    for i in range(0, len(keys), 5_000):
        await writer.write(
            {key: PendingDevice(_A, _T0, False, True) for key in keys[i : i + 5_000]}, {}
        )
    counts = await pg_pool.fetchrow(
        "SELECT count(*) FILTER (WHERE type = 'device.registered'), count(*)"
        " FROM event_outbox WHERE tenant_id = $1",
        tenant,
    )
    assert counts is not None
    assert tuple(counts) == (100_000, 100_000)
