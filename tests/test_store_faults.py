"""Each store stopped, hung and crashed while a real proxy serves traffic, with the figures.

A proxy in front of a counting upstream serves clients calling back to back: one blocked device
(which must get ``403`` every time and never reach the upstream) and a fresh allowed device per
call (so every flush writes new rows). Mid-traffic the store is stopped (its own clean shutdown),
hung (SIGSTOP of every server process: sockets open, nothing answers) or crashed (SIGKILL of
every server process), then restarted or resumed. Counted:

- ``failed``: answers other than the expected 403 / 200 (none: the hot path needs no store);
- ``leaked_blocked``: requests of the blocked device that reached the upstream (must be 0);
- ``lost_writes``: acknowledged writes missing afterwards (must be 0): the blocks made before
  the fault (in Postgres and in the Redis edge view) and the devices the proxy had reported
  flushed (committed) when the fault struck;
- ``unrecorded``: answered devices missing from Postgres after the proxy drained (must be 0);
- ``detect_seconds``: fault to ``/readyz`` showing it (``postgres_flushing`` or
  ``blocklist_fresh`` false); ``recover_seconds``: from starting the restart (or the SIGCONT) to
  ``/readyz`` clear again.

The proxy hands its activity to a recorder service (the recorder process's work, run in the
test's process) over its Unix socket, as a worker does in production: "flushed" is what the
recorder answered as committed. Both stores are private and durable (the embedded default), so
a crash keeps what it acknowledged. The figures go to ``docs/reliability.md`` through
:func:`reliability_log.record`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from conftest import EdgeFactory, Stores
from edgerig import CountingUpstream, metric_value
from reliability_log import record

from gatekeeper.domain import edgeview
from gatekeeper.edge.activity.service import RecorderService
from gatekeeper.edge.activity.writer import FLUSH_TIMEOUT_SECONDS, PostgresWriter
from gatekeeper.edge.blocklist import PING_INTERVAL_SECONDS, PING_TIMEOUT_SECONDS
from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from gatekeeper.store import edge_writes as store
from gatekeeper.store.clients import open_pg_pool, open_redis

BLOCKED = ("blocked-0", "blocked-1", "blocked-2")  # only the first one calls
CLIENTS = 3
MAX_REQUESTS = 6_000  # a bound, whatever happens: ~10 s at the pace below
PAUSE = 0.01  # between a client's calls
HOLD = 0.5  # the fault lasts this long after it shows
# How long until /readyz shows the fault: a refused connection shows at the next flush or read;
# a hung server only when a deadline passes (plus slack for a loaded 2-core machine).
DETECT_WITHIN = {
    ("postgres", "hung"): FLUSH_TIMEOUT_SECONDS + 3.0,
    ("redis", "hung"): PING_INTERVAL_SECONDS + PING_TIMEOUT_SECONDS + 3.0,
}
RECOVER_WITHIN = 15.0


class Traffic:
    """Clients calling the proxy back to back until stopped (or ``MAX_REQUESTS``)."""

    def __init__(self, session: aiohttp.ClientSession, edge: EdgeServer, tenant: str) -> None:
        self._session = session
        self._url = f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/items"
        self._stop = asyncio.Event()
        # (device, expected status, status or 0 for no answer, monotonic time sent)
        self.results: list[tuple[str, int, int, float]] = []
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(CLIENTS)]

    async def _client(self, n: int) -> None:
        i = 0
        while not self._stop.is_set() and len(self.results) < MAX_REQUESTS:
            device, expected = (BLOCKED[0], 403) if i % 3 == 0 else (f"ok-{n}-{i:05d}", 200)
            sent = time.monotonic()
            try:
                async with self._session.get(
                    self._url,
                    headers={"X-Device-Id": device},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.results.append((device, expected, status, sent))
            i += 1
            await asyncio.sleep(PAUSE)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def failed(self) -> int:
        return sum(1 for _d, expected, status, _t in self.results if status != expected)

    def answered_devices(self) -> set[str]:
        return {d for d, _e, status, _t in self.results if status in (200, 403)}

    def during(self, start: float, end: float) -> int:
        return sum(1 for *_rest, sent in self.results if start <= sent < end)


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    async with CountingUpstream() as counting:
        yield counting


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _readyz(session: aiohttp.ClientSession, edge: EdgeServer) -> tuple[int, dict[str, bool]]:
    async with session.get(f"http://127.0.0.1:{edge.metrics_port}/readyz") as response:
        return response.status, (await response.json())["checks"]


def _fault_shows(kind: str, checks: dict[str, bool]) -> bool:
    return not checks["postgres_flushing"] if kind == "postgres" else not checks["blocklist_fresh"]


async def _wait_for(
    session: aiohttp.ClientSession, edge: EdgeServer, kind: str, showing: bool, within: float
) -> float:
    """Seconds until /readyz shows the fault (``showing``) or shows it cleared."""
    started = time.monotonic()
    while True:
        status, checks = await _readyz(session, edge)
        # Neither store's fault makes the proxy unready: it serves from the mirror it holds.
        assert status == 200, checks
        if _fault_shows(kind, checks) == showing:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"/readyz still says {checks}"
        await asyncio.sleep(0.02)


async def _inject(pair: Stores, kind: str, fault: str) -> None:
    server = pair.postgres if kind == "postgres" else pair.redis
    action = {"stopped": server.stop, "hung": server.pause, "crashed": server.kill}[fault]
    await asyncio.to_thread(action)  # the proxy under test shares this event loop


async def _restore(pair: Stores, kind: str, fault: str) -> None:
    if fault == "hung":
        await asyncio.to_thread((pair.postgres if kind == "postgres" else pair.redis).resume)
    elif kind == "postgres":
        pair.postgres = EmbeddedPostgres(pair.postgres.data_dir, port=pair.postgres.port)
        await asyncio.to_thread(pair.postgres.start)
    else:
        pair.redis = EmbeddedRedis(pair.redis.data_dir, port=pair.redis.port)
        await asyncio.to_thread(pair.redis.start)


async def _block_devices(pair: Stores, tenant: str) -> None:
    pool = await open_pg_pool(pair.pg_url, min_size=0, max_size=1)
    redis = open_redis(pair.redis_url)
    try:
        for device in BLOCKED:
            assert await store.set_blocked(pool, redis, tenant, device, True, create=True)
    finally:
        await pool.close()
        await redis.aclose()


async def _kept_blocks(pair: Stores, tenant: str) -> int:
    """Blocks present in both Postgres (the truth) and the Redis edge view."""
    conn = await asyncpg.connect(pair.pg_url)
    redis = open_redis(pair.redis_url)
    try:
        in_postgres = {
            r[0]
            for r in await conn.fetch(
                "SELECT device_id FROM devices WHERE tenant_id = $1 AND is_blocked", tenant
            )
        }
        in_redis = {
            d
            for d in BLOCKED
            if await redis.sismember(edgeview.BLOCKED_SET, edgeview.member(tenant, d))
        }
    finally:
        await conn.close()
        await redis.aclose()
    return len(in_postgres & in_redis & set(BLOCKED))


async def _stored_devices(pair: Stores, tenant: str) -> set[str]:
    conn = await asyncpg.connect(pair.pg_url)
    try:
        return {
            r[0]
            for r in await conn.fetch("SELECT device_id FROM devices WHERE tenant_id = $1", tenant)
        }
    finally:
        await conn.close()


async def _wait_flushed(edge: EdgeServer, tenant: str, at_least: int) -> None:
    deadline = time.monotonic() + 10
    while len(_flushed(edge, tenant)) < at_least:
        assert time.monotonic() < deadline, "the proxy flushed nothing before the fault"
        await asyncio.sleep(0.02)


class _Recorder:
    """A recorder service on a Unix socket, with its own pool, as the recorder process runs."""

    def __init__(self, pool: asyncpg.Pool, folder: str) -> None:
        self._pool = pool
        self._folder = folder
        self.path = os.path.join(folder, "recorder.sock")
        self.service = RecorderService(PostgresWriter(pool), self.path)

    async def stop(self) -> None:
        await self.service.stop(time.monotonic() + 5)
        self._pool.terminate()
        shutil.rmtree(self._folder, ignore_errors=True)


async def _start_recorder(pair: Stores) -> _Recorder:
    pool = await open_pg_pool(pair.pg_url, min_size=0, max_size=3)
    # A short directory: a Unix socket's path is limited to 107 bytes.
    recorder = _Recorder(pool, tempfile.mkdtemp(prefix="gk-rec-"))
    await recorder.service.start()
    return recorder


def _flushed(edge: EdgeServer, tenant: str) -> set[str]:
    """Devices the proxy's recorder has committed (what it counted as flushed)."""
    return {device for t, device in edge.recorder._known if t == tenant}


@pytest.mark.parametrize("fault", ["stopped", "hung", "crashed"])
@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_store_fault_under_traffic(
    kind: str,
    fault: str,
    durable_stores: Stores,
    edge_factory: EdgeFactory,
    upstream: CountingUpstream,
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    pair = durable_stores
    await _block_devices(pair, tenant)
    recorder = await _start_recorder(pair)
    edge = await edge_factory(
        stores_=pair,
        upstream=upstream.url,
        flush_retry_max_seconds=0.5,
        recorder_socket=recorder.path,
    )
    traffic = Traffic(session, edge, tenant)
    try:
        await _wait_flushed(edge, tenant, at_least=100)
        struck = time.monotonic()
        await _inject(pair, kind, fault)
        # Everything the proxy counted as committed before the store went away (nothing can
        # commit while it is stopped, frozen or dead): exactly what must survive the fault.
        acked_devices = _flushed(edge, tenant)
        detect = await _wait_for(session, edge, kind, True, DETECT_WITHIN.get((kind, fault), 3.0))
        if kind == "redis":
            assert (
                await metric_value(session, edge.metrics_port, "gatekeeper_blocklist_stale") == 1.0
            )
        await asyncio.sleep(HOLD)
        restored = time.monotonic()
        await _restore(pair, kind, fault)
        await _wait_for(session, edge, kind, False, RECOVER_WITHIN)
        recover = time.monotonic() - restored  # the restart (or SIGCONT) included
        await asyncio.sleep(0.2)  # some traffic after the recovery too
    finally:
        await traffic.stop()
        await asyncio.to_thread(pair.postgres.resume)
        await asyncio.to_thread(pair.redis.resume)
    await edge.stop()  # drains: everything answered is written now
    await recorder.stop()

    stored = await _stored_devices(pair, tenant)
    lost = (len(BLOCKED) - await _kept_blocks(pair, tenant)) + len(acked_devices - stored)
    figures = {
        "requests": len(traffic.results),
        "failed": traffic.failed,
        "during_fault": traffic.during(struck, restored),
        "leaked_blocked": upstream.by_device[BLOCKED[0]],
        "acked_writes": len(BLOCKED) + len(acked_devices),
        "lost_writes": lost,
        "unrecorded": len(traffic.answered_devices() - stored),
        "detect_seconds": round(detect, 2),
        "recover_seconds": round(recover, 2),
    }
    record(f"{kind}.{fault}", **figures)
    assert figures["during_fault"] > 0, figures
    assert figures["failed"] == 0, figures
    assert figures["leaked_blocked"] == 0, figures
    assert figures["lost_writes"] == 0, figures
    assert figures["unrecorded"] == 0, figures
