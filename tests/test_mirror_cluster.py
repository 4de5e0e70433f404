"""The mirror on a real Valkey Cluster: sharded pub/sub, and a planned failover it must notice.

A planned failover (``CLUSTER FAILOVER``) leaves the old primary up, demoted: the mirror's
connection stays open and PINGs are still answered, but the server ends the sharded
subscription (the channel's slot moved). The mirror must take that as a lost subscription,
subscribe on the new primary and reload; otherwise it would hear no change until its periodic
resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from clusterrig import ValkeyCluster
from edgerig import eventually

from gatekeeper.domain import edgeview
from gatekeeper.edge import metrics
from gatekeeper.edge.blocklist import BlocklistMirror
from gatekeeper.store import edge_writes as store
from gatekeeper.store.clients import open_redis


def _reloads(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("gatekeeper_mirror_resyncs_total", {"reason": reason})
    return value or 0.0


async def _device(pool: asyncpg.Pool, tenant: str, device: str) -> None:
    await pool.execute("INSERT INTO devices (tenant_id, device_id) VALUES ($1, $2)", tenant, device)


async def test_the_mirror_follows_the_channel_through_a_planned_failover(
    valkey_cluster: ValkeyCluster, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    writer, reader = open_redis(valkey_cluster.url), open_redis(valkey_cluster.url)
    mirror = BlocklistMirror(reader, resync_seconds=3600.0)
    task = asyncio.create_task(mirror.run())
    try:
        for device in ("first", "second"):
            await _device(pg_pool, tenant, device)

        async def denies(device: str) -> bool:
            return mirror.denial((tenant, device)) == "blocked"

        assert await eventually(lambda: asyncio.sleep(0, mirror.loaded))
        await store.set_blocked(pg_pool, writer, tenant, "first", True)
        assert await eventually(lambda: denies("first"), 1.0)  # SPUBLISH → SSUBSCRIBE

        reconnects = _reloads("reconnect")
        owner = valkey_cluster.owner(edgeview.CHANNEL)
        started = time.perf_counter()
        await asyncio.to_thread(valkey_cluster.planned_failover, owner)
        assert valkey_cluster.owner(edgeview.CHANNEL) is not owner
        assert mirror.denial((tenant, "first")) == "blocked"  # kept through the move

        failed_over = time.perf_counter()
        await store.set_blocked(pg_pool, writer, tenant, "second", True)
        written = time.perf_counter()
        assert await eventually(lambda: denies("second"), 5.0)
        print(
            f"\n[planned failover] roles swapped in {failed_over - started:.2f} s; a block then"
            f" took {(written - failed_over) * 1000:.1f} ms to write and reached the mirror"
            f" {(time.perf_counter() - written) * 1000:.1f} ms later"
        )
        assert _reloads("reconnect") > reconnects
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.aclose()
        await reader.aclose()
