"""Shutdown: one cancellation ends the blocklist mirror; the HTTP server's hard phase cuts what
the drain left; a failed start leaves nothing behind (docs/decisions.md, "Shutdown (issue 9)")."""

from __future__ import annotations

import asyncio

from conftest import Stores

from gatekeeper.edge.blocklist import BlocklistMirror
from gatekeeper.store.clients import open_redis


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
