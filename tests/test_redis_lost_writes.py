"""A change the old primary acknowledged but never replicated comes back after a failover.

Redis replicates asynchronously, so a failover may lose the last acknowledged writes. The admin
API notices that the edge view's primary became another process (its run id) and reconciles
from Postgres. The lost write is made deterministic here: the block reaches both servers, then
is removed on the replica alone (a writable replica keeps its own writes to itself); killing the
primary then promotes a replica without it, exactly as if it had never been replicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from clusterrig import SentinelSet, ValkeyNode
from conftest import Stores
from edgerig import eventually
from test_admin_helpers import admin_settings, running_api

from admin_api.metrics import METRICS
from gatekeeper.domain import edgeview
from gatekeeper.edge.blocklist import BlocklistMirror
from gatekeeper.store.clients import open_redis

FAILOVER_LIMIT = 30.0


async def test_a_block_lost_in_a_failover_is_restored_from_postgres(
    sentinel_set: SentinelSet, stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    admin_redis, mirror_redis = open_redis(sentinel_set.url), open_redis(sentinel_set.url)
    mirror = BlocklistMirror(mirror_redis, resync_seconds=3600.0)
    task = asyncio.create_task(mirror.run())
    settings = admin_settings(stores.pg_url, sentinel_set.url)
    try:
        async with running_api(settings, pg_pool, admin_redis, tenant) as api:
            await api.create_device("lost")
            response = await api.call("POST", api.device_path("lost", "/block"), json={})
            assert response.status == 200

            async def denied() -> bool:
                return mirror.denial((tenant, "lost")) == "blocked"

            assert await eventually(denied, 1.0)

            # The replica loses the block; the primary dies; the replica takes over.
            member = edgeview.member(tenant, "lost")
            replica, old = sentinel_set.replica, sentinel_set.primary
            replica.cli("CONFIG", "SET", "replica-read-only", "no")
            assert replica.cli("SREM", edgeview.BLOCKED_SET, member).strip() == "1"
            old.kill()
            killed = time.perf_counter()
            deadline = time.monotonic() + FAILOVER_LIMIT
            while sentinel_set.current_primary() is old:
                assert time.monotonic() < deadline, "the sentinels did not fail over"
                await asyncio.sleep(0.05)
            promoted = time.perf_counter()

            # The mirror reloads from the new primary (without the block), then the admin's
            # reconcile puts it back, and the mirror denies again.
            async def restored_in_redis() -> bool:
                return _has(replica, member)

            async def restored_at_the_edge() -> bool:
                return await denied() and not mirror.stale

            assert await eventually(restored_in_redis, 15.0)
            assert await eventually(restored_at_the_edge, 5.0)
            restored = time.perf_counter()
            changes = api.app[METRICS].registry.get_sample_value(
                "gatekeeper_admin_redis_primary_changes_total"
            )
            assert changes is not None and changes >= 1
            print(
                f"\n[lost write] replica promoted {promoted - killed:.2f} s after the kill;"
                f" the lost block was back in Redis and at the edge"
                f" {restored - promoted:.2f} s after the promotion"
            )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await admin_redis.aclose()
        await mirror_redis.aclose()


def _has(node: ValkeyNode, member: str) -> bool:
    return node.cli("SISMEMBER", edgeview.BLOCKED_SET, member).strip() == "1"
