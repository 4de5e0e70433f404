"""The mirror's subscription to the edge view's change channel, on any Redis topology.

One server, or a Sentinel-watched primary: plain SUBSCRIBE on the client's own pool (a Sentinel
pool asks the sentinels where the primary is at every connect, so a reconnect after a failover
finds the new one). A cluster: SSUBSCRIBE (sharded pub/sub) on the primary that owns the
channel's slot, over a connection of its own; the slot map is read afresh first, since after a
failover the owner it names is a different node. The writers SPUBLISH there
(:mod:`gatekeeper.store.edge_writes`), inside the transaction that changes the sets: the channel
carries the edge view's hash tag, so both live in one slot.

redis-py's cluster pub/sub is not used: it re-routes subscriptions by itself when the slot map
changes, and the mirror must know when that happens, because messages published meanwhile are
lost and only a full reload makes up for them.
"""

from __future__ import annotations

import contextlib

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import SlotNotCoveredError

from gatekeeper.domain import edgeview
from gatekeeper.store.clients import RedisClient

__all__ = ["ENDED_TYPES", "MESSAGE_TYPES", "Subscription", "subscribe"]

# A published message, as redis-py types it: plain (PUBLISH) or sharded (SPUBLISH).
MESSAGE_TYPES = frozenset({"message", "smessage"})
# The server ended the subscription: a cluster node sends ``sunsubscribe`` when the channel's
# slot leaves it (a planned failover demotes it, a resharding moves the slot), and keeps the
# connection open and answering PINGs. redis-py hands these on only when subscribe messages are
# not ignored, so they are not: the confirmations of our own subscribe are skipped by type.
ENDED_TYPES = frozenset({"unsubscribe", "sunsubscribe"})


class Subscription:
    """A subscription to :data:`edgeview.CHANNEL`; close it with :meth:`aclose`."""

    __slots__ = ("_owned", "pubsub", "where")

    def __init__(self, pubsub: PubSub, owned: aioredis.Redis | None, where: str) -> None:
        self.pubsub = pubsub
        self._owned = owned  # the node client of a cluster subscription
        self.where = where

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        if self._owned is not None:
            with contextlib.suppress(Exception):
                await self._owned.aclose()


async def subscribe(redis: RedisClient) -> Subscription:
    """Subscribe to the change channel where ``redis`` serves it. Raises what the client raises
    when that server cannot be reached (the caller backs off and calls again)."""
    if isinstance(redis, RedisCluster):
        return await _subscribe_sharded(redis)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(edgeview.CHANNEL)
    except BaseException:
        await Subscription(pubsub, None, "").aclose()
        raise
    return Subscription(pubsub, None, "server")


async def _subscribe_sharded(cluster: RedisCluster) -> Subscription:
    await cluster.initialize()  # the first time only: the client's own set-up
    # Read the slot map again: the owner it held before a failover may be dead or a replica.
    await cluster.nodes_manager.initialize()
    node = cluster.get_node_from_key(edgeview.CHANNEL)
    if node is None:
        raise SlotNotCoveredError(f"no node serves the slot of {edgeview.CHANNEL}")
    pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
    client = aioredis.Redis.from_pool(pool)
    pubsub = client.pubsub()
    subscription = Subscription(pubsub, client, node.name)
    try:
        await pubsub.ssubscribe(edgeview.CHANNEL)
    except BaseException:
        await subscription.aclose()
        raise
    return subscription
