"""The blocklist mirror's lifecycle: one cancellation ends it (Python 3.11's wait_for can drop
one), its resync period is read from the Clock seam, and every full reload is counted."""

from __future__ import annotations

import asyncio
import contextlib

from conftest import Stores
from edgerig import eventually

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent
from gatekeeper.edge import metrics
from gatekeeper.edge.blocklist import BlocklistMirror
from gatekeeper.store.clients import open_redis
from gatekeeper.store.edge_writes import publish
from gatekeeper.types import ManualClock


async def test_one_cancel_ends_the_mirror(stores: Stores) -> None:
    """PINGs back to back keep a Redis send in flight most of the time; cancelling after 0..11
    loop turns lands in every phase of it, including the one where Python 3.11's wait_for
    dropped the cancellation (two in three attempts hung before the fix)."""
    redis = open_redis(stores.redis_url)
    try:
        for turns in range(24):
            mirror = BlocklistMirror(redis, resync_seconds=60.0, ping_interval=0.0)
            task = asyncio.create_task(mirror.run())
            while not mirror.loaded:
                await asyncio.sleep(0.005)
            for _ in range(turns % 12):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            while not task.done():  # no task left behind, whatever the outcome
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            assert done, f"one cancellation did not end the mirror (after {turns % 12} turns)"
            assert task.cancelled()
    finally:
        await redis.aclose()


async def test_the_mirror_resyncs_on_its_clock(stores: Stores, tenant: str) -> None:
    """The resync period is read from the ``Clock`` seam: a change made behind the mirror's back
    (no event published) shows once the clock passes the period, without a real wait."""
    clock = ManualClock()
    redis = open_redis(stores.redis_url)
    mirror = BlocklistMirror(redis, resync_seconds=60.0, ping_interval=0.05, clock=clock)
    task = asyncio.create_task(mirror.run())
    try:

        async def synced() -> bool:
            return mirror.loaded and mirror.synced_at == clock.wall()

        assert await eventually(synced)
        await redis.sadd(edgeview.BLOCKED_SET, edgeview.member(tenant, "quiet"))
        await asyncio.sleep(0.3)  # several turns of the loop, no resync yet
        assert mirror.denial((tenant, "quiet")) is None
        clock.advance(61.0)

        async def reloaded() -> bool:
            return mirror.denial((tenant, "quiet")) == "blocked"

        assert await eventually(reloaded, 2.0)
        assert await eventually(synced)  # "synced at" is the clock's wall time too
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.srem(edgeview.BLOCKED_SET, edgeview.member(tenant, "quiet"))
        await redis.aclose()


def _reloads() -> dict[str, float]:
    return {
        reason: metrics.REGISTRY.get_sample_value(
            "gatekeeper_mirror_resyncs_total", {"reason": reason}
        )
        or 0.0
        for reason in ("start", "announced", "periodic")
    }


async def test_every_full_reload_is_counted_by_reason(stores: Stores) -> None:
    """gatekeeper_mirror_resyncs_total{reason}: the first load, a reconcile's announcement and
    the periodic reload (a reconnect's is counted in test_mirror_cluster/test_redis_failover)."""
    clock = ManualClock()
    redis = open_redis(stores.redis_url)
    mirror = BlocklistMirror(redis, resync_seconds=60.0, ping_interval=0.05, clock=clock)
    before = _reloads()

    async def counted(reason: str) -> bool:
        return _reloads()[reason] == before[reason] + 1

    task = asyncio.create_task(mirror.run())
    try:
        assert await eventually(lambda: counted("start"))
        await publish(redis, [EdgeEvent("resync")])
        assert await eventually(lambda: counted("announced"))
        clock.advance(61.0)
        assert await eventually(lambda: counted("periodic"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()
