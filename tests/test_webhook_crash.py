"""An admin process killed (SIGKILL) in the middle of a delivery loses nothing (issue 14): the
delivery's lease ends and the restarted admin delivers it, at least once.

The admin runs as the real command (``python -m gatekeeper admin``) against the session's stores,
in a session of its own so that the test can kill it whole."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from conftest import Stores
from test_admin_helpers import SECRET
from webhook_rig import (
    create_webhook,
    dispatcher_settings,
    drop_webhooks,
    emit,
    receiver,
    running_dispatcher,
)

from gatekeeper.store.clients import open_pg_pool

TIMEOUT = 2.0  # webhook_timeout_seconds: the lease is 2 x 2 + 10 = 14 s


@pytest.fixture(autouse=True)
async def _drop_webhooks(pg_pool: asyncpg.Pool, tenant: str) -> AsyncIterator[None]:
    yield
    await drop_webhooks(pg_pool, tenant)


def _env(stores: Stores, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env.update(
        GATEKEEPER_DATABASE_URL=stores.pg_url,
        GATEKEEPER_REDIS_URL=stores.redis_url,
        GATEKEEPER_JWT_SECRET=SECRET,
        GATEKEEPER_ADMIN_PORT="0",
        GATEKEEPER_DATA_DIR=str(tmp_path / "data"),
        GATEKEEPER_WEBHOOK_ALLOW_PRIVATE_TARGETS="true",
        GATEKEEPER_WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT),
    )
    return env


async def _admin(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gatekeeper",
            "admin",
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


async def _kill(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    await proc.wait()


async def test_a_delivery_cut_by_sigkill_is_delivered_after_the_restart(
    stores: Stores, pg_pool: asyncpg.Pool, tenant: str, tmp_path: Path
) -> None:
    env, log = _env(stores, tmp_path), tmp_path / "admin.log"
    async with receiver() as got:
        got.gate = asyncio.Event()  # the first request is held open, never answered
        hook = await create_webhook(pg_pool, tenant, got.url, got.secret)
        event = await emit(pg_pool, tenant, "device.blocked", {"deviceId": "d"}, device_id="d")
        first = await _admin(env, log)
        try:
            await got.until(lambda r: r.waiting == 1, "the delivery to arrive")
            got.gate = None  # later requests are answered at once
            await _kill(first, signal.SIGKILL)
        finally:
            await _kill(first, signal.SIGKILL)
        assert first.returncode == -signal.SIGKILL
        delivery = await pg_pool.fetchrow(
            "SELECT state, attempts FROM webhook_deliveries WHERE webhook_id = $1", hook
        )
        assert delivery is not None and (delivery["state"], delivery["attempts"]) == ("pending", 1)
        assert got.hits == []  # the held request was never answered

        second = await _admin(env, log)
        try:
            await got.until(lambda r: event in r.delivered(), "the delivery after the restart")
        finally:
            await _kill(second, signal.SIGTERM)
    assert got.delivered() == [event]
    assert got.bad_signatures == 0
    row = await pg_pool.fetchrow(
        "SELECT state, attempts FROM webhook_deliveries WHERE webhook_id = $1", hook
    )
    assert row is not None and (row["state"], row["attempts"]) == ("delivered", 2), log.read_text()


async def test_the_dispatcher_outlives_a_database_outage(private_stores: Stores) -> None:
    """Rounds fail while PostgreSQL is down (logged, retried); once it is back, the loop that
    never stopped delivers what was queued before and what comes after."""
    pool = await open_pg_pool(private_stores.pg_url, min_size=1, max_size=5)
    try:
        async with receiver() as got:
            await create_webhook(pool, "acme", got.url, got.secret)
            before = await emit(pool, "acme", "device.blocked", {"deviceId": "a"}, device_id="a")
            settings = dispatcher_settings(private_stores.pg_url)
            async with running_dispatcher(pool, settings, poll_seconds=0.05) as dispatcher:
                await got.until(lambda r: before in r.delivered(), "the first event")
                async with asyncio.timeout(30):  # and its result recorded
                    while (
                        await pool.fetchval(
                            "SELECT state FROM webhook_deliveries WHERE event_id = $1", before
                        )
                        != "delivered"
                    ):
                        await asyncio.sleep(0.02)
                await asyncio.to_thread(private_stores.postgres.stop)
                # Rounds fail now; wait for one to have tried (its warning is logged).
                failed = dispatcher.failed_rounds
                async with asyncio.timeout(30):
                    while dispatcher.failed_rounds == failed:
                        await asyncio.sleep(0.02)
                await asyncio.to_thread(private_stores.postgres.start)
                after = await emit(pool, "acme", "device.blocked", {"deviceId": "a"}, device_id="a")
                await got.until(lambda r: after in r.delivered(), "the event after the outage")
    finally:
        await pool.close()
    assert got.delivered() == [before, after]
