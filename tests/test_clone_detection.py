"""Clone detection in the recorder's flush (issue 14): a device back on the hardware it had just
left, within ``clone_window_seconds``, is a conflict. The recorder stamps requests with a fake
clock, so the window is crossed without waiting; Postgres and the writer are real."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from console_rig import Console
from test_admin_helpers import Api

from gatekeeper.domain.identity import Attributes
from gatekeeper.edge import storemetrics
from gatekeeper.edge.activity.pending import PendingDevice
from gatekeeper.edge.activity.recorder import ActivityRecorder
from gatekeeper.edge.activity.writer import PostgresWriter
from gatekeeper.types import DeviceKey, ManualClock

_WINDOW = 3600.0
_A: Attributes = ("App", "1.0", "Android", "14", "Acme", "X1")
_B: Attributes = ("App", "1.0", "Android", "14", "Globex", "G7")
_C: Attributes = ("App", "1.0", "Android", "14", "Initech", "I3")
# A software update on hardware A: a change, but not of the hardware.
_A2: Attributes = ("App", "2.0", "Android", "14", "Acme", "X1")


def _conflicts_counted() -> float:
    value = storemetrics.REGISTRY.get_sample_value("gatekeeper_device_conflicts_total")
    return value or 0.0


class _Fleet:
    """A recorder with a fake clock writing to the real Postgres; one flush per sighting."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.clock = ManualClock()
        self.recorder = ActivityRecorder(
            PostgresWriter(pool, clone_window=_WINDOW),
            flush_interval=1.0,
            flush_max_devices=1_000,
            max_pending=10_000,
            retry_max_seconds=1.0,
            clock=self.clock,
        )

    async def see(self, key: DeviceKey, attributes: Attributes, after: float = 60.0) -> None:
        self.clock.advance(after)
        self.recorder.record(key, attributes, False)
        await self.recorder.flush_once()


async def _history(pool: asyncpg.Pool, tenant: str, device: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT recorded_at, conflict_since, current->>'manufacturer' AS maker"
        " FROM device_history WHERE tenant_id = $1 AND device_id = $2 ORDER BY recorded_at, id",
        tenant,
        device,
    )


async def _conflict_events(pool: asyncpg.Pool, tenant: str, device: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT data FROM event_outbox WHERE tenant_id = $1 AND device_id = $2"
        " AND type = 'device.conflict' ORDER BY id",
        tenant,
        device,
    )
    return [json.loads(r[0]) for r in rows]


async def _conflict_at(pool: asyncpg.Pool, tenant: str, device: str) -> Any:
    return await pool.fetchval(
        "SELECT conflict_at FROM devices_with_activity WHERE tenant_id = $1 AND device_id = $2",
        tenant,
        device,
    )


async def _assert_no_conflict(pool: asyncpg.Pool, tenant: str, device: str) -> None:
    assert all(r["conflict_since"] is None for r in await _history(pool, tenant, device))
    assert await _conflict_events(pool, tenant, device) == []
    assert await _conflict_at(pool, tenant, device) is None


async def test_a_b_a_within_the_window_is_one_conflict(
    pg_pool: asyncpg.Pool, tenant: str, api: Api, console: Console
) -> None:
    fleet, key = _Fleet(pg_pool), (tenant, "twin")
    before = _conflicts_counted()
    await fleet.see(key, _A)
    await fleet.see(key, _A2)  # not a hardware change: does not count as "left A"
    await fleet.see(key, _B)
    await fleet.see(key, _A2, after=_WINDOW - 1)
    history = await _history(pg_pool, tenant, "twin")
    assert [r["maker"] for r in history] == ["Acme", "Acme", "Globex", "Acme"]
    assert [r["conflict_since"] for r in history] == [None, None, None, history[2]["recorded_at"]]
    assert await _conflict_at(pg_pool, tenant, "twin") == history[3]["recorded_at"]
    (event,) = await _conflict_events(pg_pool, tenant, "twin")
    assert event["deviceId"] == "twin"
    assert event["hardware"] == {"manufacturer": "Acme", "model": "X1"}
    assert event["otherHardware"] == {"manufacturer": "Globex", "model": "G7"}
    assert event["otherSeenAt"] is not None and event["recordedAt"] is not None
    assert _conflicts_counted() == before + 1
    # The conflict event follows the device.changed of the same record, in outbox order.
    types = await pg_pool.fetch(
        "SELECT type FROM event_outbox WHERE tenant_id = $1 AND device_id = 'twin' ORDER BY id",
        tenant,
    )
    assert [t[0] for t in types][-2:] == ["device.changed", "device.conflict"]
    # The admin API shows it: conflictAt on the Device, the flag on the history record.
    device = await (await api.call("GET", api.device_path("twin"))).json()
    assert device["conflictAt"] is not None
    records = await (await api.call("GET", api.device_path("twin", "/history"))).json()
    assert [r["conflict"] for r in records] == [True, False, False, False]
    page = await console.text(console.url("/devices/twin"))
    assert "Clone conflict" in page and "Clear conflict" in page
    # The console's button clears it (through the API: audited like every console action).
    after = await console.submit(console.url("/devices/twin/clear-conflict"))
    assert "Clone conflict" not in after and "Clear conflict" not in after
    assert await _conflict_at(pg_pool, tenant, "twin") is None
    # A device without a conflict shows none.
    await fleet.see((tenant, "single"), _A)
    assert "Clone conflict" not in await console.text(console.url("/devices/single"))


async def test_a_b_a_outside_the_window_is_no_conflict(pg_pool: asyncpg.Pool, tenant: str) -> None:
    fleet, key = _Fleet(pg_pool), (tenant, "slow")
    before = _conflicts_counted()
    await fleet.see(key, _A)
    await fleet.see(key, _B)
    await fleet.see(key, _A, after=_WINDOW + 1)
    assert len(await _history(pg_pool, tenant, "slow")) == 3
    await _assert_no_conflict(pg_pool, tenant, "slow")
    assert _conflicts_counted() == before


async def test_a_b_c_and_a_b_b_are_no_conflict(pg_pool: asyncpg.Pool, tenant: str) -> None:
    fleet = _Fleet(pg_pool)
    before = _conflicts_counted()
    for attributes in (_A, _B, _C):
        await fleet.see((tenant, "abc"), attributes)
    for attributes in (_A, _B, _B):
        await fleet.see((tenant, "abb"), attributes)
    assert len(await _history(pg_pool, tenant, "abc")) == 3
    assert len(await _history(pg_pool, tenant, "abb")) == 2  # B again is no change
    await _assert_no_conflict(pg_pool, tenant, "abc")
    await _assert_no_conflict(pg_pool, tenant, "abb")
    assert _conflicts_counted() == before


async def test_each_flip_back_is_a_conflict(pg_pool: asyncpg.Pool, tenant: str) -> None:
    """A, B, A, B: the second and the third change each undo the change before them."""
    fleet = _Fleet(pg_pool)
    before = _conflicts_counted()
    for attributes in (_A, _B, _A, _B):
        await fleet.see((tenant, "flip"), attributes)
    history = await _history(pg_pool, tenant, "flip")
    assert [r["conflict_since"] is not None for r in history] == [False, False, True, True]
    assert len(await _conflict_events(pg_pool, tenant, "flip")) == 2
    assert await _conflict_at(pg_pool, tenant, "flip") == history[3]["recorded_at"]
    assert _conflicts_counted() == before + 2


async def test_a_conflict_stays_in_its_tenant(pg_pool: asyncpg.Pool, tenant: str) -> None:
    """Two tenants, one device id: the other tenant's B then A is not a flip back of this
    tenant's A then B, and this tenant's conflict leaves the other's device untouched."""
    other = f"{tenant}-other"
    fleet = _Fleet(pg_pool)
    await fleet.see((tenant, "shared"), _A)
    await fleet.see((tenant, "shared"), _B)
    await fleet.see((other, "shared"), _B)
    await fleet.see((other, "shared"), _A)
    await fleet.see((tenant, "shared"), _A)
    assert len(await _conflict_events(pg_pool, tenant, "shared")) == 1
    assert await _conflict_at(pg_pool, tenant, "shared") is not None
    await _assert_no_conflict(pg_pool, other, "shared")


async def test_an_admin_clears_a_conflict_and_the_next_flip_back_sets_it_again(
    pg_pool: asyncpg.Pool, tenant: str, api: Api
) -> None:
    fleet, key = _Fleet(pg_pool), (tenant, "ack")
    for attributes in (_A, _B, _A):
        await fleet.see(key, attributes)
    flagged = await _conflict_at(pg_pool, tenant, "ack")
    assert flagged is not None
    # Another tenant's device of the same id, in conflict too, is out of reach.
    other = (f"{tenant}-other", "ack")
    for attributes in (_A, _B, _A):
        await fleet.see(other, attributes)
    path = api.device_path("ack", "/conflict/clear")
    read_only = await api.call("POST", path, scopes=["Device.Read"])
    assert read_only.status == 403
    for _ in range(2):  # idempotent
        cleared = await api.call("POST", path)
        assert cleared.status == 200, await cleared.text()
        assert (await cleared.json())["conflictAt"] is None
    assert await _conflict_at(pg_pool, tenant, "ack") is None
    assert await _conflict_at(pg_pool, *other) is not None
    # The history keeps its flagged record; the audit says what was cleared, and when not.
    records = await (await api.call("GET", api.device_path("ack", "/history"))).json()
    assert [r["conflict"] for r in records] == [True, False, False]
    audit = await (await api.call("GET", api.path("/audit?action=device.conflict_clear"))).json()
    assert [e["details"]["conflictAt"] is None for e in audit] == [True, False]  # newest first
    assert (await api.call("POST", api.device_path("missing", "/conflict/clear"))).status == 404
    # The next flip back is a new conflict.
    await fleet.see(key, _B)
    assert await _conflict_at(pg_pool, tenant, "ack") is not None


async def test_conflicts_within_one_batch_on_every_flush_path(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """Sightings of one flush: a new device seen A, B, A (phase 1), a known device seen B, A
    (the lock-and-compare phase 2) and one seen A alone (the one-statement phase 2), among
    devices without conflicts; every row, record and event of the batch is written."""
    writer = PostgresWriter(pg_pool, clone_window=_WINDOW)
    t0 = 1_700_000_000.0

    def seen(*sightings: Attributes) -> PendingDevice:
        entry = PendingDevice(sightings[0], t0, False, True)
        for n, attributes in enumerate(sightings[1:], 1):
            entry.absorb(PendingDevice(attributes, t0 + n, False, False))
        return entry

    plain = {(tenant, f"plain{i:03d}"): seen(_A) for i in range(300)}
    before = _conflicts_counted()
    await writer.write(
        {**plain, (tenant, "known-b"): seen(_A), (tenant, "known-1"): seen(_A, _B)}, {}
    )
    t0 += 10
    batch = {
        **{key: seen(_A2) for key in plain},
        (tenant, "new"): seen(_A, _B, _A),
        (tenant, "known-b"): seen(_B, _A),
    }
    await writer.write(batch, {})
    await writer.write({(tenant, "known-1"): seen(_A)}, {})
    for device in ("new", "known-b", "known-1"):
        assert len(await _conflict_events(pg_pool, tenant, device)) == 1, device
        assert await _conflict_at(pg_pool, tenant, device) is not None, device
    assert _conflicts_counted() == before + 3
    counts = await pg_pool.fetchrow(
        "SELECT (SELECT count(*) FROM device_activity WHERE tenant_id = $1),"
        " (SELECT count(*) FROM device_history WHERE tenant_id = $1),"
        " (SELECT count(*) FROM event_outbox WHERE tenant_id = $1"
        "  AND type <> 'device.conflict'),"
        " (SELECT count(*) FROM device_activity WHERE tenant_id = $1"
        "  AND conflict_at IS NOT NULL)",
        tenant,
    )
    assert counts is not None
    # 303 devices; history: 303 first sightings, 300 updates, known-1's A→B, new's two changes,
    # known-b's two, known-1's flip back; one event per record.
    history = 303 + 300 + 1 + 2 + 2 + 1
    assert tuple(counts) == (303, history, history, 3)


async def test_a_clone_storm_in_one_batch_is_written_within_the_deadline(
    pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """Two devices sharing each of 200 ids, alternating 40 times within one flush: 7,800
    hardware changes in one piece, as new devices (phase 1) and again as known ones (phase 2,
    under its nested-loop plan settings). Each change finds the one before it by a sort, not a
    search of the others, so the pieces commit well within the writer's deadline."""
    writer = PostgresWriter(pg_pool, clone_window=_WINDOW)
    t0 = 1_700_000_000.0

    def storm(start: float) -> dict[DeviceKey, PendingDevice]:
        batch: dict[DeviceKey, PendingDevice] = {}
        for i in range(200):
            entry = PendingDevice(_A, start, False, True)
            for n in range(1, 40):
                entry.absorb(PendingDevice(_B if n % 2 else _A, start + n, False, False))
            batch[(tenant, f"storm{i:03d}")] = entry
        return batch

    async def flagged() -> int:
        count: int = await pg_pool.fetchval(
            "SELECT count(*) FROM device_history"
            " WHERE tenant_id = $1 AND conflict_since IS NOT NULL",
            tenant,
        )
        return count

    before = _conflicts_counted()
    await writer.write(storm(t0), {})  # raises past the deadline (5 s a piece)
    # 40 sightings: a registration and 39 changes, each after the first undoing the one before.
    assert await flagged() == 200 * 38
    # Known now, last seen on B: A, B, ... again is 40 changes, each one a flip back.
    await writer.write(storm(t0 + 100), {})
    assert await flagged() == 200 * 38 + 200 * 40
    assert _conflicts_counted() == before + 200 * (38 + 40)
