"""The edge under failure: Redis stopped, cut or hung mid-traffic, a proxy started without Redis,
and SIGTERM while requests are in flight.

Redis outages use a private Valkey (``private_stores``) that the test stops and restarts on the
same port, or a :class:`faultproxy.FaultProxy` between the proxy and the session's Valkey that
cuts, blackholes or resets the proxy's connections while the store keeps writing to Redis
directly. (Postgres outages are covered by the recorder's tests; every store stopped, hung and
crashed under traffic, with figures, by ``test_store_faults.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import EdgeFactory, Stores
from edgerig import CountingUpstream, ProxyProcess, eventually, metric_value
from faultproxy import FaultProxy

from gatekeeper.edge.blocklist import PING_INTERVAL_SECONDS, PING_TIMEOUT_SECONDS, BlocklistMirror
from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.embedded import EmbeddedRedis
from gatekeeper.store import edge_writes as store
from gatekeeper.store.clients import open_pg_pool, open_redis

PROBLEM = "application/problem+json"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    async with CountingUpstream() as counting:
        yield counting


async def _status(
    session: aiohttp.ClientSession, edge: EdgeServer, tenant: str, device: str | None
) -> int:
    headers = {"X-Device-Id": device} if device else {}
    async with session.get(
        f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/x", headers=headers
    ) as response:
        await response.read()
        return response.status


async def _stale(session: aiohttp.ClientSession, edge: EdgeServer) -> float | None:
    return await metric_value(session, edge.metrics_port, "gatekeeper_blocklist_stale")


async def _readyz(session: aiohttp.ClientSession, edge: EdgeServer) -> tuple[int, dict[str, bool]]:
    async with session.get(f"http://127.0.0.1:{edge.metrics_port}/readyz") as response:
        return response.status, (await response.json())["checks"]


def _redis_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_redis_stopped_mid_traffic_mirror_keeps_serving(
    private_stores: Stores,
    edge_factory: EdgeFactory,
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    pool = await open_pg_pool(private_stores.pg_url, min_size=0, max_size=2)
    redis = open_redis(private_stores.redis_url)
    traffic: asyncio.Task[list[tuple[str, int]]] | None = None
    stop_traffic = asyncio.Event()
    try:
        edge = await edge_factory(stores_=private_stores)
        await store.set_blocked(pool, redis, tenant, "bad", True, create=True)
        assert await eventually(lambda: _is(session, edge, tenant, "bad", 403), 1.0)

        async def keep_calling() -> list[tuple[str, int]]:
            seen = []
            while not stop_traffic.is_set():
                for device in ("bad", "good"):
                    seen.append((device, await _status(session, edge, tenant, device)))
                await asyncio.sleep(0.005)
            return seen

        traffic = asyncio.create_task(keep_calling())
        await asyncio.sleep(0.05)
        private_stores.redis.stop()

        async def stale() -> bool:
            return await _stale(session, edge) == 1.0

        assert await eventually(stale, 5.0)
        status, checks = await _readyz(session, edge)
        assert status == 200 and checks["blocklist_loaded"] and not checks["blocklist_fresh"]
        assert await _status(session, edge, tenant, "bad") == 403
        assert await _status(session, edge, tenant, "good") == 200

        # Back on the same port (persistence on): the mirror reconnects and is fresh again.
        restarted = EmbeddedRedis(private_stores.redis.data_dir, port=private_stores.redis.port)
        private_stores.redis = restarted
        restarted.start()

        async def fresh() -> bool:
            return (
                await _stale(session, edge) == 0.0
                and (await _readyz(session, edge))[1]["blocklist_fresh"]
            )

        assert await eventually(fresh, 10.0)
        stop_traffic.set()
        seen = await traffic
        traffic = None
        assert {s for d, s in seen if d == "bad"} == {403}
        assert {s for d, s in seen if d == "good"} == {200}
        # The subscription is live again: a new block arrives by pub/sub. (A new client: the
        # old one's pooled connection died with the server.)
        await redis.aclose()
        redis = open_redis(private_stores.redis_url)
        await store.set_blocked(pool, redis, tenant, "good", True, create=True)
        assert await eventually(lambda: _is(session, edge, tenant, "good", 403), 1.0)
    finally:
        stop_traffic.set()
        if traffic is not None:
            with contextlib.suppress(Exception):
                await traffic
        await pool.close()
        await redis.aclose()


async def _is(
    session: aiohttp.ClientSession, edge: EdgeServer, tenant: str, device: str, status: int
) -> bool:
    return await _status(session, edge, tenant, device) == status


@pytest.mark.parametrize("fault", ["cut", "blip"])
async def test_resync_after_reconnect_picks_up_changes_made_meanwhile(
    fault: str,
    stores: Stores,
    edge_factory: EdgeFactory,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    """``cut``: the proxy's Redis connections are closed and refused (it reports stale) while
    the store changes Redis directly. ``blip``: the proxy's connections silently drop what is
    published, then are reset while Redis stays reachable, so the client reconnects at once."""
    async with FaultProxy("127.0.0.1", _redis_port(stores.redis_url)) as fault_proxy:
        # A long periodic resync, so only the reconnect can explain a fresh mirror.
        edge = await edge_factory(redis_url=fault_proxy.url, blocklist_resync_seconds=300)
        await store.set_blocked(pg_pool, redis_client, tenant, "was-blocked", True, create=True)
        assert await eventually(lambda: _is(session, edge, tenant, "was-blocked", 403), 1.0)
        assert await _status(session, edge, tenant, "now-blocked") == 200

        if fault == "cut":
            await fault_proxy.cut()

            async def stale() -> bool:
                return await _stale(session, edge) == 1.0

            assert await eventually(stale, 5.0)
        else:
            await fault_proxy.blackhole()
        await store.set_blocked(pg_pool, redis_client, tenant, "now-blocked", True, create=True)
        await store.set_blocked(pg_pool, redis_client, tenant, "was-blocked", False)
        # The proxy has not heard: it still serves its last view.
        assert await _status(session, edge, tenant, "now-blocked") == 200
        assert await _status(session, edge, tenant, "was-blocked") == 403

        if fault == "cut":
            await fault_proxy.restore()
        else:
            await fault_proxy.reset()

        async def caught_up() -> bool:
            return (
                await _status(session, edge, tenant, "now-blocked") == 403
                and await _status(session, edge, tenant, "was-blocked") == 200
            )

        assert await eventually(caught_up, 5.0)
        assert await eventually(lambda: _not_stale(session, edge), 2.0)


async def _not_stale(session: aiohttp.ClientSession, edge: EdgeServer) -> bool:
    return await _stale(session, edge) == 0.0


async def test_hung_redis_marks_the_mirror_stale_and_it_keeps_serving(
    stores: Stores,
    edge_factory: EdgeFactory,
    upstream: CountingUpstream,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    """Redis keeps the connections open and answers nothing (a hung server, a partition): a
    quiet subscription must not pass for a live one."""
    async with FaultProxy("127.0.0.1", _redis_port(stores.redis_url)) as fault_proxy:
        edge = await edge_factory(
            redis_url=fault_proxy.url, upstream=upstream.url, blocklist_resync_seconds=300
        )
        await store.set_blocked(pg_pool, redis_client, tenant, "bad", True, create=True)
        assert await eventually(lambda: _is(session, edge, tenant, "bad", 403), 1.0)

        await fault_proxy.blackhole()
        hung_at = time.monotonic()

        async def stale() -> bool:
            return await _stale(session, edge) == 1.0

        assert await eventually(stale, PING_INTERVAL_SECONDS + PING_TIMEOUT_SECONDS + 2.0)
        detected = time.monotonic() - hung_at
        assert detected >= PING_TIMEOUT_SECONDS - 0.1  # by the PING's deadline, not by chance
        status, checks = await _readyz(session, edge)
        assert status == 200 and checks["blocklist_loaded"] and not checks["blocklist_fresh"]
        # Serving from the last mirror, exactly as with Redis stopped.
        assert await _status(session, edge, tenant, "bad") == 403
        assert await _status(session, edge, tenant, "good") == 200
        await store.set_blocked(pg_pool, redis_client, tenant, "good", True, create=True)

        await fault_proxy.reset()  # answers again (on new connections)
        assert await eventually(lambda: _not_stale(session, edge), 10.0)
        # The reload after reconnecting brought the block made while the edge was deaf.
        assert await eventually(lambda: _is(session, edge, tenant, "good", 403), 1.0)
    assert upstream.by_device["bad"] == 0


async def test_proxy_started_while_redis_down_is_unready_then_recovers(
    stores: Stores,
    edge_factory: EdgeFactory,
    upstream: CountingUpstream,
    session: aiohttp.ClientSession,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FaultProxy("127.0.0.1", _redis_port(stores.redis_url)) as fault_proxy:
        await fault_proxy.cut()  # the port is known, nothing listens on it
        with caplog.at_level(logging.WARNING, logger="gatekeeper.edge.blocklist"):
            edge = await edge_factory(redis_url=fault_proxy.url, upstream=upstream.url, wait=False)
            await asyncio.sleep(1.0)  # the mirror retries at 0.1, 0.2, 0.4, 0.8 s
        # Said once (then at most every 10 s), with what the proxy does meanwhile.
        said = [r.getMessage() for r in caplog.records if "no mirror yet" in r.getMessage()]
        assert len(said) == 1, said
        assert "Redis unreachable" in said[0] and "answers 503" in said[0]
        async with session.get(f"http://127.0.0.1:{edge.metrics_port}/readyz") as response:
            assert response.status == 503
            body = await response.json()
        # The shape of every /readyz: the facts, and why it is not ready in words.
        assert body["status"] == "not ready" and not body["checks"]["blocklist_loaded"]
        assert body["reasons"] == ["the blocklist mirror has not loaded from Redis yet"]
        for device in ("d1", None):
            async with session.get(
                f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/x",
                headers={"X-Device-Id": device} if device else {},
            ) as response:
                assert response.status == 503
                assert response.headers["Content-Type"] == PROBLEM
                assert response.headers["Retry-After"] == "1"
                assert (await response.json(content_type=None))["status"] == 503
        assert upstream.requests == 0

        await fault_proxy.restore()

        async def ready() -> bool:
            return (await _readyz(session, edge))[0] == 200

        assert await eventually(ready, 10.0)
        assert await _status(session, edge, tenant, "d1") == 200
        assert upstream.requests == 1


async def test_fail_open_forwards_while_redis_down(
    stores: Stores,
    edge_factory: EdgeFactory,
    upstream: CountingUpstream,
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    async with FaultProxy("127.0.0.1", _redis_port(stores.redis_url)) as fault_proxy:
        await fault_proxy.cut()
        edge = await edge_factory(
            redis_url=fault_proxy.url, upstream=upstream.url, fail_open=True, wait=False
        )
        status, checks = await _readyz(session, edge)
        assert status == 200 and not checks["blocklist_loaded"]
        assert await _status(session, edge, tenant, "d1") == 200
        assert upstream.by_device["d1"] == 1


async def test_sigterm_finishes_in_flight_requests_and_flushes_activity(
    stores: Stores,
    pg_pool: asyncpg.Pool,
    tenant: str,
    tmp_path: Path,
) -> None:
    n = 10
    async with CountingUpstream(delay=1.0) as slow, aiohttp.ClientSession() as session:
        # No periodic flush within the test: only the shutdown drain can write the devices.
        proc = ProxyProcess(
            database_url=stores.pg_url,
            redis_url=stores.redis_url,
            upstream=slow.url,
            log_dir=tmp_path,
            env={"GATEKEEPER_FLUSH_INTERVAL_SECONDS": "60"},
        )
        try:
            proc.start()
            await proc.wait_ready(session)

            async def call(i: int) -> tuple[int, bytes]:
                async with session.post(
                    f"{proc.base}/api/{tenant}/upload",
                    data=b"x" * 100,
                    headers={"X-Device-Id": f"sig-{i}", "X-App-Name": "crew"},
                ) as response:
                    return response.status, await response.read()

            calls = [asyncio.create_task(call(i)) for i in range(n)]

            async def all_in_flight() -> bool:
                return slow.in_flight == n

            assert await eventually(all_in_flight, 5.0)
            proc.terminate()
            results = await asyncio.gather(*calls)
            assert results == [(200, b"upstream ok")] * n
            assert await proc.wait_exit(10.0) == 0, proc.tail()
        finally:
            await proc.stop()
    rows = await pg_pool.fetch(
        "SELECT device_id, application, last_active_at, last_data_upload_at"
        " FROM device_activity"
        " WHERE tenant_id = $1 ORDER BY device_id",
        tenant,
    )
    assert [r["device_id"] for r in rows] == sorted(f"sig-{i}" for i in range(n))
    assert all(r["application"] == "crew" and r["last_data_upload_at"] is not None for r in rows)


async def test_a_quiet_healthy_redis_keeps_the_mirror_fresh(
    stores: Stores,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No message for many PING intervals is not an outage: every PING is answered, so the
    mirror never goes stale and never reconnects. (With redis-py 8's RESP3 default the PONG on
    a subscribed connection was dropped by the client, and an idle stack flapped every 3 s.)"""
    client = open_redis(stores.redis_url)
    mirror = BlocklistMirror(client, resync_seconds=300, ping_interval=0.1, ping_timeout=0.3)
    task = asyncio.create_task(mirror.run())
    try:
        assert await eventually(lambda: _true(mirror.loaded), 5.0)
        synced_before = mirror.synced_at
        stale_seen = False
        with caplog.at_level("WARNING", logger="gatekeeper.edge.blocklist"):
            for _ in range(30):  # 1.5 s: fifteen PINGs, five PING timeouts
                await asyncio.sleep(0.05)
                stale_seen |= mirror.stale
        assert not stale_seen
        logged = [r for r in caplog.records if r.name == "gatekeeper.edge.blocklist"]
        assert [r.getMessage() for r in logged] == []
        assert mirror.synced_at > synced_before  # the PONGs are what keep it fresh
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


async def _true(value: bool) -> bool:
    return value
