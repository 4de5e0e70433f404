"""``redis+cluster://`` and ``redis+sentinel://`` URLs open working clients (real servers)."""

from __future__ import annotations

from clusterrig import SentinelSet, ValkeyCluster
from redis.asyncio.cluster import RedisCluster

from gatekeeper.domain import edgeview
from gatekeeper.store.clients import is_cluster, open_redis


async def test_a_cluster_url_opens_a_cluster_client(valkey_cluster: ValkeyCluster) -> None:
    redis = open_redis(valkey_cluster.url)
    try:
        assert isinstance(redis, RedisCluster) and is_cluster(redis)
        # The edge view's keys share one slot, so a transaction may span them.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.sadd(edgeview.BLOCKED_SET, "t d")
            pipe.srem(edgeview.SHADOW_SET, "t d")
            pipe.spublish(edgeview.CHANNEL, "block t d")
            assert await pipe.execute() == [1, 0, 0]
        assert await redis.smembers(edgeview.BLOCKED_SET) == {"t d"}
    finally:
        await redis.aclose()


async def test_a_sentinel_url_reaches_the_primary(sentinel_set: SentinelSet) -> None:
    redis = open_redis(sentinel_set.url)
    try:
        assert not is_cluster(redis)
        await redis.set("probe", "1")
        assert sentinel_set.primary.cli("GET", "probe").strip() == "1"
    finally:
        await redis.aclose()
