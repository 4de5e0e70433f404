"""The admin process's background loops outlive a failure they did not expect.

asyncpg raises ``InterfaceError`` (not a ``PostgresError``) for a connection or pool closed under
a caller; the reconcile loop and the stale-device job caught only PostgresError and OSError, so
one such error ended them for the life of the process: a failed edge write was then never
repaired, and the retention never ran again. Here the pool is a real one, closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from conftest import Stores

from admin_api.edgesync import EdgeSync
from admin_api.metrics import AdminMetrics
from admin_api.stalejob import StaleDeviceJob
from gatekeeper.store.clients import open_pg_pool, open_redis


async def test_a_reconcile_that_meets_a_closed_pool_fails_and_is_tried_again(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await open_pg_pool(stores.pg_url, min_size=1, max_size=1)
    await pool.close()
    redis = open_redis(stores.redis_url)
    sync = EdgeSync(pool, redis, AdminMetrics(), retry_first=0.02, retry_max=0.05)
    caplog.set_level(logging.WARNING)
    try:
        assert await sync.reconcile_now() is False  # raised InterfaceError before the fix
        sync.start()
        sync.failed(RuntimeError("an edge write failed"))  # asks for a reconcile
        await asyncio.sleep(0.3)  # several failed attempts, each retried
        attempts = [r for r in caplog.records if r.getMessage().startswith("reconcile failed")]
        assert len(attempts) >= 3 and not sync.in_sync
        assert sync._task is not None and not sync._task.done()
    finally:
        await sync.close()
        await redis.aclose()


async def test_the_stale_device_job_outlives_a_closed_pool(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await open_pg_pool(stores.pg_url, min_size=1, max_size=1)
    await pool.close()
    redis = open_redis(stores.redis_url)
    sync = EdgeSync(pool, redis, AdminMetrics())
    job = StaleDeviceJob(pool, redis, sync, check_seconds=0.02)
    caplog.set_level(logging.WARNING)
    task = asyncio.create_task(job.run())
    try:
        await asyncio.sleep(0.3)
        assert not task.done(), task.exception() if task.done() else None
        failures = [r for r in caplog.records if "stale devices: run failed" in r.getMessage()]
        assert len(failures) >= 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()
