"""What happens when Redis fails after Postgres committed an admin change.

Decision: the change stands (Postgres is the truth and already holds it), the request succeeds,
``gatekeeper_admin_edge_sync_errors_total`` is counted, and a background task rebuilds the Redis
edge view with :func:`gatekeeper.store.edge_writes.reconcile`, retrying with backoff until it
succeeds.
Until then the edge keeps its previous view of that one change.

The same repair follows a change of the Redis primary (a failover, a restart), which may have
lost changes it had acknowledged: :mod:`admin_api.primarywatch`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final, TypeVar

import asyncpg
from aiohttp import web

from admin_api.metrics import AdminMetrics
from admin_api.primarywatch import WATCH_SECONDS, PrimaryWatch
from gatekeeper.store.clients import POSTGRES_FAILURES, RedisClient
from gatekeeper.store.edge_writes import EdgeSyncError, reconcile

__all__ = ["EDGE_SYNC", "EdgeSync"]

_log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRY_FIRST_SECONDS: Final = 0.5
_RETRY_MAX_SECONDS: Final = 30.0


class EdgeSync:
    """Runs store calls that touch the edge, and repairs the edge view when one fails."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisClient,
        metrics: AdminMetrics,
        *,
        retry_first: float = _RETRY_FIRST_SECONDS,
        retry_max: float = _RETRY_MAX_SECONDS,
        watch_seconds: float = WATCH_SECONDS,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._metrics = metrics
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch = PrimaryWatch(redis, self._primary_changed, interval=watch_seconds)
        self.in_sync = True

    async def call(self, change: Awaitable[T]) -> tuple[T | None, bool]:
        """Await a store call; ``(result, True)``, or ``(None, False)`` when only Redis failed."""
        try:
            return await change, True
        except EdgeSyncError as exc:
            self.failed(exc)
            return None, False

    def failed(self, exc: Exception) -> None:
        """Count a failed edge write and ask for a reconcile."""
        self._metrics.edge_sync_errors.inc()
        _log.warning("edge view not updated (%s); reconcile scheduled", exc)
        self.in_sync = False
        self._wanted.set()

    def _primary_changed(self, before: str, now: str) -> None:
        """Writes the old primary acknowledged may be missing on the new one: reconcile."""
        self._metrics.primary_changes.inc()
        _log.warning(
            "the Redis primary of the edge view changed (run id %s… → %s…); reconcile scheduled",
            before[:8],
            now[:8],
        )
        self._wanted.set()

    async def reconcile_now(self) -> bool:
        try:
            counts = await reconcile(self._pool, self._redis)
        except Exception as exc:
            # Whatever it was, the loop retries: a reconcile that stopped for good would leave
            # acknowledged blocks missing from the edge for the life of the process.
            self._metrics.reconciles.labels("error").inc()
            if isinstance(exc, (EdgeSyncError, *POSTGRES_FAILURES)):
                _log.warning("reconcile failed: %s", exc)
            else:
                _log.exception("reconcile failed")
            return False
        self._metrics.reconciles.labels("ok").inc()
        self.in_sync = True
        _log.info("edge view reconciled: %s", counts)
        return True

    async def _run(self) -> None:
        delay = self._retry_first
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            if await self.reconcile_now():
                delay = self._retry_first
                continue
            self._wanted.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="admin-edge-reconcile")
        self._watch.start()

    async def close(self) -> None:
        await self._watch.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


EDGE_SYNC = web.AppKey("edge_sync", EdgeSync)
