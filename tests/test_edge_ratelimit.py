"""The per-device rate limit on a running proxy: the (burst+1)th request is 429 problem+json with
Retry-After and counted as rate_limited; a blocked device keeps its 403 and spends no token;
tenant rates; off means no limiter at all; two workers each enforce their share of the node's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import EdgeFactory, Stores, edge_settings
from edgerig import eventually, metric_value
from test_recorder_process import metrics_text, sample

from gatekeeper import logs
from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.supervisor import Supervisor
from gatekeeper.store import edge_writes as store

pytestmark = pytest.mark.timeout(90)

_LIMITED = 'gatekeeper_requests_total{outcome="rate_limited"}'


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _statuses(
    session: aiohttp.ClientSession, port: int, tenant: str, device: str, count: int
) -> list[int]:
    found = []
    for _ in range(count):
        async with session.get(
            f"http://127.0.0.1:{port}/api/{tenant}/x", headers={"X-Device-Id": device}
        ) as got:
            await got.read()
            found.append(got.status)
    return found


async def _limited(session: aiohttp.ClientSession, edge: EdgeServer) -> float:
    value = await metric_value(
        session, edge.metrics_port, "gatekeeper_requests_total", {"outcome": "rate_limited"}
    )
    return value or 0.0


async def test_the_request_after_the_burst_is_429_with_retry_after(
    edge_factory: EdgeFactory,
    session: aiohttp.ClientSession,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(logs, "_current", ("json", "worker"))  # access lines as JSON
    # A token every 4 s: nothing refills while the test runs.
    edge = await edge_factory(device_rate_limit_per_second=0.25, device_rate_limit_burst=3)
    capfd.readouterr()
    before = await _limited(session, edge)
    assert await _statuses(session, edge.proxy_port, tenant, "dev-1", 3) == [200] * 3
    async with session.get(
        f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/x", headers={"X-Device-Id": "dev-1"}
    ) as refused:
        body = json.loads(await refused.read())
        assert refused.status == 429
        assert refused.headers["Content-Type"] == "application/problem+json"
        retry = refused.headers["Retry-After"]
        assert retry.isdigit() and 1 <= int(retry) <= 4
    assert body["status"] == 429 and body["title"] == "Too many requests"
    assert await _limited(session, edge) == before + 1
    # The sampled access log writes every refusal.
    assert edge.access_log is not None
    edge.access_log.flush()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.strip()]
    refused_lines = [line for line in lines if line["outcome"] == "rate_limited"]
    assert [(line["status"], line["device_id"]) for line in refused_lines] == [(429, "dev-1")]
    # Another device, and a request naming no device, are not held back by dev-1's bucket.
    assert await _statuses(session, edge.proxy_port, tenant, "dev-2", 1) == [200]
    async with session.get(f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/x") as anonymous:
        assert anonymous.status == 200


async def test_a_blocked_device_keeps_its_403_and_spends_no_token(
    edge_factory: EdgeFactory,
    session: aiohttp.ClientSession,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    edge = await edge_factory(device_rate_limit_per_second=0.25, device_rate_limit_burst=1)
    await store.set_blocked(pg_pool, redis_client, tenant, "lost", True, create=True)

    async def mirrored(blocked: bool) -> bool:
        return (edge.mirror.denial((tenant, "lost")) is not None) == blocked

    assert await eventually(lambda: mirrored(True))
    assert await _statuses(session, edge.proxy_port, tenant, "lost", 5) == [403] * 5
    await store.set_blocked(pg_pool, redis_client, tenant, "lost", False)
    assert await eventually(lambda: mirrored(False))
    # Its one token is still there: the five denials spent none.
    assert await _statuses(session, edge.proxy_port, tenant, "lost", 2) == [200, 429]


async def test_a_tenant_rate_overrides_the_default(
    edge_factory: EdgeFactory, session: aiohttp.ClientSession, tenant: str
) -> None:
    # Burst 0: each tenant's bucket holds a second of its own rate.
    edge = await edge_factory(
        device_rate_limit_per_second=0.01, device_rate_limit_tenants={tenant: 5.0}
    )
    port = edge.proxy_port
    assert await _statuses(session, port, tenant, "d", 7) == [200] * 5 + [429] * 2
    assert await _statuses(session, port, f"{tenant}x", "d", 3) == [200, 429, 429]


async def test_off_by_default_no_limiter_is_consulted(
    edge_factory: EdgeFactory, session: aiohttp.ClientSession, tenant: str
) -> None:
    edge = await edge_factory()
    assert edge.limiter is None and edge.handler._limiter is None
    before = await _limited(session, edge)
    assert await _statuses(session, edge.proxy_port, tenant, "busy", 60) == [200] * 60
    assert await _limited(session, edge) == before


@pytest.fixture
async def node(stores: Stores, echo_upstream: str) -> AsyncIterator[Supervisor]:
    # A token every 200 s, node-wide burst 4: each of the two workers admits 2, then refuses.
    settings = edge_settings(
        stores,
        echo_upstream,
        workers=2,
        access_log="off",
        device_rate_limit_per_second=0.005,
        device_rate_limit_burst=4,
    )
    running = Supervisor(settings)
    await running.start()
    try:
        await running.wait_ready()
        yield running
    finally:
        await running.stop()


async def test_two_workers_each_enforce_their_share(node: Supervisor, tenant: str) -> None:
    port = node.settings.proxy_port
    before = sample(await metrics_text(node.metrics_port), _LIMITED)
    # A new connection per request: the kernel spreads them over both workers. With 40, each
    # worker sees at least its 2 (all 40 on one worker: odds of 2^-39).
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(40):
            async with http.get(
                f"http://127.0.0.1:{port}/api/{tenant}/x", headers={"X-Device-Id": "shared"}
            ) as response:
                await response.read()
                statuses.append(response.status)
    # Each worker admits its share (2), not the whole burst (which would make 8).
    assert statuses.count(200) == 4 and statuses.count(429) == 36, statuses

    async def counted() -> bool:
        # Each worker writes its hot counters out on its own beat: poll for the sum.
        return sample(await metrics_text(node.metrics_port), _LIMITED) - before == 36

    assert await eventually(counted, 10.0, 0.1)
