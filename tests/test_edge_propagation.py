"""Blocks, unblocks, disables and enables made through the store reach every proxy process.

The proxies run as production runs them (``python -m gatekeeper proxy``, child processes) against
the session's Postgres and Valkey; the upstream counts what reaches it, so a denied request that
leaked through would show. Propagation times are printed (run pytest with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import Stores
from edgerig import CountingUpstream, ProxyProcess, eventually, metric_value
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from gatekeeper.store import edge_writes as store

LIMIT_SECONDS = 1.0
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[CountingUpstream]:
    async with CountingUpstream() as counting:
        yield counting


@pytest.fixture(scope="module")
async def two_proxies(
    stores: Stores, upstream: CountingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[ProxyProcess]]:
    """Two separate proxy processes (one worker each), as two nodes would be."""
    logs = tmp_path_factory.mktemp("proxies")
    procs = [
        ProxyProcess(
            database_url=stores.pg_url,
            redis_url=stores.redis_url,
            upstream=upstream.url,
            log_dir=logs,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            proc.start()
        async with aiohttp.ClientSession() as session:
            for proc in procs:
                await proc.wait_ready(session)
        yield procs
    finally:
        for proc in procs:
            await proc.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _status(session: aiohttp.ClientSession, url: str, device: str) -> int:
    async with session.get(url, headers={"X-Device-Id": device}) as response:
        await response.read()
        return response.status


async def _propagation(
    session: aiohttp.ClientSession,
    urls: list[str],
    device: str,
    change: Callable[[], Awaitable[object]],
    expected: int,
) -> list[float]:
    """Seconds from ``change()`` returning until each url first answers ``expected``.

    Each url is polled back to back from before the change, so the figure is bounded by one
    request's round trip; 0.0 means the proxy already answered so before the call returned."""
    returned: list[float] = []
    stop_at = time.perf_counter() + 5.0

    async def poll(url: str) -> float:
        while time.perf_counter() < stop_at:
            status = await _status(session, url, device)
            seen = time.perf_counter()
            if status == expected and returned:
                return max(0.0, seen - returned[0])
        return float("inf")

    pollers = [asyncio.create_task(poll(url)) for url in urls]
    await asyncio.sleep(0.01)  # the pollers are running before the change is made
    await change()
    returned.append(time.perf_counter())
    return list(await asyncio.gather(*pollers))


def _report(what: str, seconds: list[float]) -> None:
    figures = ", ".join(f"process {i + 1}: {s * 1000:.1f} ms" for i, s in enumerate(seconds))
    print(f"\n[propagation] {what}: {figures}")


async def _assert_denied(session: aiohttp.ClientSession, url: str, device: str, title: str) -> None:
    async with session.get(url, headers={"X-Device-Id": device}) as response:
        assert response.status == 403
        assert response.headers["Content-Type"] == PROBLEM
        body = await response.json(content_type=None)
    assert body["title"] == title and body["status"] == 403


async def test_block_and_unblock_reach_two_proxy_processes(
    two_proxies: list[ProxyProcess],
    upstream: CountingUpstream,
    session: aiohttp.ClientSession,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    urls = [f"{p.base}/api/{tenant}/things" for p in two_proxies]
    device = "dev-block"
    for url in urls:
        assert await _status(session, url, device) == 200

    async def block() -> None:
        assert (
            await store.set_blocked(
                pg_pool, redis_client, tenant, device, True, "stolen", create=True
            )
            is not None
        )

    seconds = await _propagation(session, urls, device, block, 403)
    _report("block", seconds)
    assert max(seconds) <= LIMIT_SECONDS

    # A denied request never reaches the upstream.
    reached = upstream.by_device[device]
    for url in urls:
        for _ in range(5):
            await _assert_denied(session, url, device, "Device blocked")
    assert upstream.by_device[device] == reached
    # Another device of the tenant, and the same device id in another tenant, still pass.
    assert await _status(session, urls[0], "dev-other") == 200
    assert await _status(session, f"{two_proxies[1].base}/api/{tenant}x/things", device) == 200

    async def unblock() -> None:
        assert await store.set_blocked(pg_pool, redis_client, tenant, device, False) is not None

    seconds = await _propagation(session, urls, device, unblock, 200)
    _report("unblock", seconds)
    assert max(seconds) <= LIMIT_SECONDS
    assert upstream.by_device[device] > reached


async def test_disable_and_enable_reach_two_proxy_processes(
    two_proxies: list[ProxyProcess],
    upstream: CountingUpstream,
    session: aiohttp.ClientSession,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    urls = [f"{p.base}/api/{tenant}/things" for p in two_proxies]
    device = "dev-disable"
    await pg_pool.execute(
        "INSERT INTO devices (tenant_id, device_id) VALUES ($1, $2)", tenant, device
    )

    async def disable() -> None:
        assert await store.set_enabled(pg_pool, redis_client, tenant, device, False) is not None

    seconds = await _propagation(session, urls, device, disable, 403)
    _report("disable", seconds)
    assert max(seconds) <= LIMIT_SECONDS
    reached = upstream.by_device[device]
    for url in urls:
        await _assert_denied(session, url, device, "Device disabled")
    assert upstream.by_device[device] == reached

    # Blocked wins over disabled in the title.
    await store.set_blocked(pg_pool, redis_client, tenant, device, True)
    assert await eventually(lambda: _title_is(session, urls[0], device, "Device blocked"), 1.0)
    await store.set_blocked(pg_pool, redis_client, tenant, device, False)

    async def enable() -> None:
        assert await store.set_enabled(pg_pool, redis_client, tenant, device, True) is not None

    seconds = await _propagation(session, urls, device, enable, 200)
    _report("enable", seconds)
    assert max(seconds) <= LIMIT_SECONDS


async def _title_is(session: aiohttp.ClientSession, url: str, device: str, title: str) -> bool:
    async with session.get(url, headers={"X-Device-Id": device}) as response:
        body = await response.json(content_type=None)
    return response.status == 403 and body.get("title") == title


def _per_worker_counts(metrics_dir: Path, outcome: str, scratch: Path) -> list[float]:
    """gatekeeper_requests_total{outcome} of each worker, read from its own counter file (the
    recorder process's file has no request counter: it serves none)."""
    counts = []
    for i, db in enumerate(sorted(metrics_dir.glob("counter_*.db"))):
        alone = scratch / f"w{i}"
        alone.mkdir(exist_ok=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        samples = [
            s
            for m in registry.collect()
            for s in m.samples
            if s.name == "gatekeeper_requests_total"
        ]
        if samples:
            counts.append(sum(s.value for s in samples if s.labels.get("outcome") == outcome))
    return counts


async def test_two_workers_serve_and_metrics_sum_both(
    stores: Stores,
    upstream: CountingUpstream,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
    tmp_path: Path,
) -> None:
    # TMPDIR: the supervisor keeps the workers' metric files there, so the test can read each.
    proc = ProxyProcess(
        database_url=stores.pg_url,
        redis_url=stores.redis_url,
        upstream=upstream.url,
        log_dir=tmp_path,
        workers=2,
        env={"TMPDIR": str(tmp_path)},
    )
    url = f"{proc.base}/api/{tenant}/things"
    n = 60
    # A fresh connection per request: SO_REUSEPORT spreads connections, not requests.
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        proc.start()
        async with aiohttp.ClientSession(connector=connector) as session:
            await proc.wait_ready(session)
            statuses = []
            for start in range(0, n, 20):
                statuses += await asyncio.gather(
                    *(_status(session, url, f"w-{i}") for i in range(start, start + 20))
                )
            assert statuses == [200] * n
            # Workers publish their request counts every 0.5 s (off the hot path): poll.
            (metrics_dir,) = tmp_path.glob("gatekeeper-metrics-*/metrics")

            async def counted(outcome: str, total: float) -> bool:
                summed = await metric_value(
                    session, proc.metrics_port, "gatekeeper_requests_total", {"outcome": outcome}
                )
                per_worker = _per_worker_counts(metrics_dir, outcome, tmp_path)
                return summed == total == sum(per_worker) and len(per_worker) == 2

            assert await eventually(lambda: counted("forwarded", n), 3.0, 0.1), proc.tail()
            assert min(_per_worker_counts(metrics_dir, "forwarded", tmp_path)) > 0

            # A block reaches both workers: every fresh connection is denied.
            await store.set_blocked(pg_pool, redis_client, tenant, "w-0", True, create=True)
            assert await eventually(lambda: _is(session, url, "w-0", 403), LIMIT_SECONDS)
            before = upstream.by_device["w-0"]
            denied = await asyncio.gather(*(_status(session, url, "w-0") for _ in range(40)))
            assert denied == [403] * 40 and upstream.by_device["w-0"] == before
            # Each worker denied some: the block reached both.
            assert await eventually(lambda: _each_worker_counted(metrics_dir, tmp_path), 3.0, 0.1)
            blocked = _per_worker_counts(metrics_dir, "blocked", tmp_path)
            assert await eventually(lambda: counted("blocked", sum(blocked)), 3.0, 0.1)
    finally:
        await proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.tail()


async def _each_worker_counted(metrics_dir: Path, scratch: Path) -> bool:
    blocked = _per_worker_counts(metrics_dir, "blocked", scratch)
    return len(blocked) == 2 and min(blocked) > 0


async def _is(session: aiohttp.ClientSession, url: str, device: str, status: int) -> bool:
    return await _status(session, url, device) == status
