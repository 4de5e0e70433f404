"""Shared fixtures: real PostgreSQL and Valkey servers from the pip wheels, on loopback.

One pair of servers serves the whole session; each test gets a tenant of its own, so tests never
see each other's devices. Tests that stop a server (outage tests) take a private pair from
``private_stores`` instead, so the shared pair stays up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from clusterrig import SentinelSet, ValkeyCluster
from console_rig import Console
from test_admin_helpers import Api, admin_settings, running_api
from webhook_rig import drop_webhooks

from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.demo_upstream import create_demo_upstream
from gatekeeper.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from gatekeeper.settings import Settings
from gatekeeper.store.clients import open_pg_pool, open_redis
from gatekeeper.store.migrate import migrate


@pytest.fixture(scope="session", autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`gatekeeper up` notes its data directory under $XDG_STATE_HOME: never the real one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@dataclass
class Stores:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis

    @property
    def pg_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def stop(self) -> None:
        # Resumed first: a test that failed while a server was frozen must not hang teardown.
        for server in (self.postgres, self.redis):
            server.resume()
            server.stop()


def _start_stores(folder: Path, *, durable: bool = False) -> Stores:
    # Fast mode (durable=False) unless a test needs acknowledged writes to survive a crash: the
    # embedded default is durable, test servers are thrown away.
    postgres = EmbeddedPostgres(folder / "pg", durable=durable)
    redis = EmbeddedRedis(folder / "redis")
    postgres.start()
    redis.start()
    asyncio.run(migrate(postgres.url))
    return Stores(postgres, redis)


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    pair = _start_stores(tmp_path_factory.mktemp("stores"))
    yield pair
    pair.stop()


@pytest.fixture
def private_stores(tmp_path: Path) -> Iterator[Stores]:
    """A pair of servers only this test uses: it may stop and restart them."""
    pair = _start_stores(tmp_path)
    yield pair
    pair.stop()


@pytest.fixture
def durable_stores(tmp_path: Path) -> Iterator[Stores]:
    """Like ``private_stores``, with a durable PostgreSQL (the embedded default): for tests
    that crash it and count the acknowledged writes it kept."""
    pair = _start_stores(tmp_path, durable=True)
    yield pair
    pair.stop()


@pytest.fixture
def valkey_cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    """A 6-node Valkey Cluster of this test's own (it may kill its nodes)."""
    cluster = ValkeyCluster(tmp_path / "cluster")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels of this test's own."""
    sentinels = SentinelSet(tmp_path / "sentinel")
    sentinels.start()
    yield sentinels
    sentinels.stop()


@pytest.fixture
def tenant() -> str:
    """A tenant id no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg_pool(stores: Stores) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pg_pool(stores.pg_url, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture
async def redis_client(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(stores.redis_url)
    assert isinstance(client, aioredis.Redis)  # a redis:// URL: one server
    yield client
    await client.aclose()


# --- the proxy -------------------------------------------------------------------------------

EdgeFactory = Callable[..., Awaitable[EdgeServer]]


@pytest.fixture
async def echo_upstream() -> AsyncIterator[str]:
    """The built-in echo upstream on a real socket; yields its base URL."""
    runner = web.AppRunner(create_demo_upstream(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def edge_settings(stores: Stores, upstream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": stores.pg_url,
        "redis_url": stores.redis_url,
        "upstream": upstream,
        "proxy_port": 0,
        "metrics_port": 0,
        "flush_interval_seconds": 0.05,
        "shutdown_drain_seconds": 5.0,
        # Every flush writes every device, so tests see each request's effect at once; the
        # deferral of pure "active again" touches has tests of its own (test_recorder.py).
        "activity_touch_seconds": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def edge_factory(stores: Stores, echo_upstream: str) -> AsyncIterator[EdgeFactory]:
    """Starts proxies (ready before returned) against the shared stores; stops them after."""
    started: list[EdgeServer] = []

    async def start(
        *,
        stores_: Stores | None = None,
        wait: bool = True,
        recorder_socket: str | None = None,
        **overrides: Any,
    ) -> EdgeServer:
        overrides.setdefault("upstream", echo_upstream)
        server = EdgeServer(
            edge_settings(stores_ or stores, **overrides), recorder_socket=recorder_socket
        )
        await server.start()
        started.append(server)
        if wait:
            await server.wait_ready()
        return server

    yield start
    for server in reversed(started):
        if not server.draining:
            await server.stop()


async def _get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


@pytest.fixture
async def proxy_metrics_text(edge_factory: EdgeFactory, tenant: str) -> str:
    """What a running proxy's /metrics exposes, after one forwarded request."""
    edge = await edge_factory()
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/x",
            headers={"X-Device-Id": "metrics-probe"},
        ) as response,
    ):
        assert response.status == 200
    return await _get_text(f"http://127.0.0.1:{edge.metrics_port}/metrics")


@pytest.fixture
async def admin_metrics_text(stores: Stores, tmp_path: Path) -> AsyncIterator[str]:
    """What a running admin API's /metrics exposes."""
    from admin_api.service import AdminService

    service = AdminService(
        Settings(
            database_url=stores.pg_url,
            redis_url=stores.redis_url,
            admin_port=0,
            jwt_secret="metrics-test-secret-0123456789abcdef0123",
            data_dir=tmp_path,
        )
    )
    await service.start()
    try:
        yield await _get_text(f"http://127.0.0.1:{service.port}/metrics")
    finally:
        await service.stop()


# --- the admin API ---------------------------------------------------------------------------


@pytest.fixture
async def api(
    stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> AsyncIterator[Api]:
    """The admin app on a real socket, with a client holding a token of ``tenant``."""
    settings = admin_settings(stores.pg_url, stores.redis_url)
    async with running_api(settings, pg_pool, redis_client, tenant) as client:
        yield client


@pytest.fixture
async def local_api(
    stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> AsyncIterator[Api]:
    """As ``api``, with ``webhook_allow_private_targets`` on (as ``gatekeeper up`` runs it), so
    webhooks may point at loopback; the tenant's webhooks are dropped after."""
    settings = admin_settings(stores.pg_url, stores.redis_url, webhook_allow_private_targets=True)
    async with running_api(settings, pg_pool, redis_client, tenant) as client:
        yield client
    await drop_webhooks(pg_pool, tenant)


@pytest.fixture
async def console(api: Api) -> Console:
    """The web console of ``api``'s admin app, signed in with one of its tokens."""
    console = Console(api)
    response = await console.sign_in()
    assert response.status == 303
    return console
