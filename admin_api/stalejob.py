"""The daily stale-device job: for each tenant with ``staleDeviceDays`` set, delete the unblocked
devices inactive longer than that (:mod:`gatekeeper.store.stale_devices`), revoking their keys.

Every admin replica runs the loop; a session advisory lock lets one run at a time, and the run's
time, kept in ``admin_jobs``, makes it once a day across replicas and restarts: the loop wakes
every ``check_seconds`` and runs only when the last run is a day old. Deletions go in batches of
``batch_size`` devices, each its own short transaction, so no lock is held for long and a crash
loses at most one batch's edge update (which the reconciler repairs). One audit entry per tenant
per run says how many devices went (zero included: it shows the retention ran).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Final

import asyncpg
from aiohttp import web

from admin_api.context import CLOCK, PG_POOL, REDIS
from admin_api.edgesync import EDGE_SYNC, EdgeSync
from admin_api.tenant_settings import stale_cutoff
from gatekeeper.store.clients import POSTGRES_FAILURES, RedisClient
from gatekeeper.store.stale_devices import delete_stale_batch, stale_candidates
from gatekeeper.types import SYSTEM_CLOCK, Clock

__all__ = ["JOB_NAME", "StaleDeviceJob", "stale_job_ctx"]

_log = logging.getLogger(__name__)

JOB_NAME: Final = "stale-devices"
ACTOR: Final = "system:stale-devices"
# An arbitrary constant naming "the stale-device job" among advisory locks (the schema's
# migrations hold 0x6A7E_4B3D).
_LOCK_ID: Final = 0x6A7E_57A1
# Due a minute early: the stored time is rounded to the microsecond, and an hourly check that
# lands a hair before the day is up would otherwise put the run off by an hour.
_DUE_SECONDS: Final = 86_400.0 - 60.0
_CHECK_SECONDS: Final = 3_600.0
_BATCH: Final = 200


class StaleDeviceJob:
    """Runs the stale-device deletion when due; :meth:`run_once` is the whole of one run."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisClient,
        edge: EdgeSync,
        *,
        clock: Clock = SYSTEM_CLOCK,
        batch_size: int = _BATCH,
        check_seconds: float = _CHECK_SECONDS,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._edge = edge
        self._clock = clock
        self._batch = batch_size
        self._check_seconds = check_seconds

    async def run_once(self, *, force: bool = False) -> dict[str, int] | None:
        """Run if due (always with ``force``): deleted counts by tenant. None when another
        replica is running it, or it ran less than a day ago."""
        async with self._pool.acquire() as lock:
            if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_ID):
                return None
            try:
                now = self._clock.wall()
                last: datetime | None = await lock.fetchval(
                    "SELECT last_run_at FROM admin_jobs WHERE name = $1", JOB_NAME
                )
                if not force and last is not None and now - last.timestamp() < _DUE_SECONDS:
                    return None
                tenants = await lock.fetch(
                    "SELECT tenant_id, stale_device_days FROM tenant_settings"
                    " WHERE stale_device_days IS NOT NULL ORDER BY tenant_id"
                )
                done = {}
                for tenant in tenants:
                    days = tenant["stale_device_days"]
                    done[tenant["tenant_id"]] = await self._tenant(tenant["tenant_id"], days, now)
                await lock.execute(
                    "INSERT INTO admin_jobs (name, last_run_at) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET last_run_at = EXCLUDED.last_run_at",
                    JOB_NAME,
                    datetime.fromtimestamp(now, UTC),
                )
                return done
            finally:
                await lock.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)

    async def _tenant(self, tenant_id: str, days: int, now: float) -> int:
        cutoff = stale_cutoff(now, days)
        deleted = 0
        after = ""
        while ids := await stale_candidates(self._pool, tenant_id, cutoff, self._batch, after):
            after = ids[-1]
            gone, failure = await delete_stale_batch(
                self._pool, self._redis, tenant_id, ids, cutoff
            )
            if failure is not None:
                self._edge.failed(failure)  # the reconciler brings the edge view in line
            deleted += len(gone)
            await asyncio.sleep(0)  # the admin API's requests go between batches
        await self._pool.execute(
            """
            INSERT INTO audit_log (tenant_id, actor, action, target_type, target_id, details)
            VALUES ($1, $2, 'device.stale-delete', 'tenant', $1, $3::jsonb)
            """,
            tenant_id,
            ACTOR,
            json.dumps({"deleted": deleted, "staleDeviceDays": days, "cutoff": cutoff.isoformat()}),
        )
        if deleted:
            _log.info("stale devices: %d deleted in tenant %s (%d days)", deleted, tenant_id, days)
        return deleted

    async def run(self) -> None:
        """Run when due, until cancelled; a failed run is logged and tried at the next check."""
        while True:
            try:
                await self.run_once()
            except POSTGRES_FAILURES as exc:
                _log.warning("stale devices: run failed (%s); trying again later", exc)
            except Exception:
                # A bug must not end the retention for the life of the process.
                _log.exception("stale devices: run failed; trying again later")
            await asyncio.sleep(self._check_seconds)


async def stale_job_ctx(app: web.Application) -> AsyncIterator[None]:
    """The job as a background task of the admin service (``cleanup_ctx``)."""
    job = StaleDeviceJob(app[PG_POOL], app[REDIS], app[EDGE_SYNC], clock=app[CLOCK])
    task = asyncio.create_task(job.run(), name="admin-stale-devices")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
