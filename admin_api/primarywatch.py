"""Notice when the Redis server that holds the edge view is a different process than before.

Redis replicates asynchronously: a change the old primary acknowledged in the last moments
before it died may never have reached the replica promoted in its place (Sentinel or Cluster
failover), and a server restarted without its data has lost everything. Postgres still holds
every such change, so the cure is a reconcile; what is needed is to know when to run it.

Each server process has a ``run_id`` (INFO server) of its own, and a promoted replica is another
process than the primary it replaces. So every :data:`WATCH_SECONDS` the admin API reads the
``run_id`` of the primary that serves the edge view's slot; a change asks for a reconcile
(:class:`admin_api.edgesync.EdgeSync`). A planned failover also changes it (one reconcile more
than needed, harmless); one INFO every few seconds costs Redis nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from redis.asyncio.cluster import RedisCluster

from gatekeeper.domain import edgeview
from gatekeeper.store.clients import REDIS_FAILURES, RedisClient

__all__ = ["WATCH_SECONDS", "PrimaryWatch", "edge_primary_id"]

_log = logging.getLogger(__name__)

# A lost write stays lost at most this long plus a reconcile (shared/DESIGN.md asks a block to
# reach the edge in about a second; a failover is rare and takes seconds itself).
WATCH_SECONDS: Final = 2.0


async def edge_primary_id(redis: RedisClient) -> str:
    """The run id of the primary that serves the edge view's keys now."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the first time only
        # Read the slot map afresh: the client's own is refreshed only when a command fails.
        await redis.nodes_manager.initialize()
        node = redis.get_node_from_key(edgeview.CHANNEL)
        info = await redis.info("server", target_nodes=node)
    else:
        info = await redis.info("server")
    return str(info["run_id"])


def _raise_lost_cancellation() -> None:
    """On Python 3.11 redis-py's ``asyncio.wait_for`` can return a command's result and drop a
    cancellation that landed meanwhile (CPython gh-86296; gatekeeper.edge.blocklist has the
    story): the request is still counted on the task, so raise it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class PrimaryWatch:
    """Calls ``on_change`` when the edge view's primary is another process than at the last
    look. Start with :meth:`start`, stop with :meth:`close`."""

    def __init__(
        self,
        redis: RedisClient,
        on_change: Callable[[str, str], None],
        *,
        interval: float = WATCH_SECONDS,
    ) -> None:
        self._redis = redis
        self._on_change = on_change
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.known: str | None = None

    async def _run(self) -> None:
        while True:
            try:
                current = await edge_primary_id(self._redis)
            except (*REDIS_FAILURES, KeyError) as exc:
                _log.debug("edge primary not known now: %s", exc)  # an outage says so elsewhere
                _raise_lost_cancellation()
            except Exception:
                # The watch must outlive a surprise: without it a failover's lost writes stay lost.
                _log.exception("edge primary watch: check failed; trying again")
                _raise_lost_cancellation()
            else:
                _raise_lost_cancellation()
                if self.known is not None and current != self.known:
                    self._on_change(self.known, current)
                self.known = current
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="admin-edge-primary-watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # Cancelled again until it ends: one cancellation can be lost (see above).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError):
            await task
