"""The admin API's watch of the edge view's Redis primary ends on one close(), in any phase.

Python 3.11's ``asyncio.wait_for`` (which redis-py sends each command through) can drop a
cancellation; a watch that lost one would loop for ever and hang the admin API's shutdown.
"""

from __future__ import annotations

import asyncio
import time

from conftest import Stores

from admin_api.primarywatch import PrimaryWatch, edge_primary_id
from gatekeeper.store.clients import open_redis


async def test_close_ends_the_watch_in_every_phase(stores: Stores) -> None:
    redis = open_redis(stores.redis_url)
    changes: list[tuple[str, str]] = []
    try:
        run_id = await edge_primary_id(redis)
        assert len(run_id) == 40
        for turns in range(24):
            # No pause between looks: an INFO is in flight most of the time.
            watch = PrimaryWatch(redis, lambda a, b: changes.append((a, b)), interval=0.0)
            watch.start()
            while watch.known is None:
                await asyncio.sleep(0.001)
            for _ in range(turns % 12):
                await asyncio.sleep(0)
            started = time.monotonic()
            await watch.close()
            assert time.monotonic() - started < 1.0, f"close took too long after {turns} turns"
            assert watch.known == run_id
        assert changes == []  # the same server all along
    finally:
        await redis.aclose()
