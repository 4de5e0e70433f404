"""The admin API and a running proxy together: what the admin changes, the edge enforces.

The proxy (``gatekeeper.edge.server.EdgeServer``) and the admin app share the session's Postgres and
Valkey; the upstream is a tiny aiohttp app that answers 200 to everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import Stores
from test_admin_helpers import Api, admin_settings, running_api

from gatekeeper.edge.server import EdgeServer
from gatekeeper.settings import Settings

PEPPER = "edge-test-pepper"


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="upstream ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


def _settings(stores: Stores, upstream: str, auth_mode: str) -> Settings:
    return admin_settings(
        stores.pg_url,
        stores.redis_url,
        key_pepper=PEPPER,
        upstream=upstream,
        proxy_port=0,
        metrics_port=0,
        auth_mode=auth_mode,
        flush_interval_seconds=0.05,
    )


@pytest.fixture(params=["passthrough", "enforce"])
async def edge(
    request: pytest.FixtureRequest, stores: Stores, upstream: str
) -> AsyncIterator[EdgeServer]:
    server = EdgeServer(_settings(stores, upstream, request.param))
    await server.start()
    await server.wait_ready()
    yield server
    await server.stop()


@pytest.fixture
async def api(
    stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str, upstream: str
) -> AsyncIterator[Api]:
    async with running_api(
        _settings(stores, upstream, "passthrough"), pg_pool, redis_client, tenant
    ) as client:
        yield client


async def _through_edge(
    edge: EdgeServer, tenant: str, device_id: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    sent = {"X-Device-Id": device_id, **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/things", headers=sent
        ) as response,
    ):
        body = await response.json(content_type=None) if response.status != 200 else {}
        return response.status, body


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float = 2.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if await check():
            return True
        await asyncio.sleep(0.02)
    return await check()


async def test_block_through_api_is_denied_by_the_proxy(api: Api, edge: EdgeServer) -> None:
    await api.create_device("edge-blk")
    key = (
        await (await api.call("POST", api.device_path("edge-blk", "/connections/reset"))).json()
    )["apiKey"]
    auth = {"X-Api-Key": key}
    assert (await _through_edge(edge, api.tenant, "edge-blk", auth))[0] == 200
    await api.call("POST", api.device_path("edge-blk", "/block"), json={"reason": "lost"})

    async def denied() -> bool:
        status, body = await _through_edge(edge, api.tenant, "edge-blk", auth)
        return status == 403 and body.get("title") == "Device blocked"

    assert await _eventually(denied, seconds=1.0)
    await api.call("POST", api.device_path("edge-blk", "/unblock"))

    async def allowed() -> bool:
        return (await _through_edge(edge, api.tenant, "edge-blk", auth))[0] == 200

    assert await _eventually(allowed, seconds=1.0)
    await api.call("PUT", api.device_path("edge-blk"), json={"isEnabled": False})

    async def disabled() -> bool:
        status, body = await _through_edge(edge, api.tenant, "edge-blk", auth)
        return status == 403 and body.get("title") == "Device disabled"

    assert await _eventually(disabled, seconds=1.0)


@pytest.mark.parametrize("edge", ["enforce"], indirect=True)
async def test_delete_revokes_the_key_at_the_edge(api: Api, edge: EdgeServer) -> None:
    await api.create_device("edge-del")
    key = (
        await (await api.call("POST", api.device_path("edge-del", "/connections/reset"))).json()
    )["apiKey"]
    assert (await _through_edge(edge, api.tenant, "edge-del", {"X-Api-Key": key}))[0] == 200
    assert (await _through_edge(edge, api.tenant, "edge-del"))[0] == 401
    assert (await api.call("DELETE", api.device_path("edge-del"))).status == 204

    async def refused() -> bool:
        status, _ = await _through_edge(edge, api.tenant, "edge-del", {"X-Api-Key": key})
        return status == 401

    assert await _eventually(refused, seconds=1.0)


@pytest.mark.parametrize("edge", ["enforce"], indirect=True)
async def test_revoked_pat_is_refused_at_the_edge(api: Api, edge: EdgeServer) -> None:
    created = await (await api.call("POST", api.path("/tokens"), json={"name": "ci"})).json()
    bearer = {"Authorization": f"Bearer {created['token']}"}
    assert (await _through_edge(edge, api.tenant, "any-device", bearer))[0] == 200
    other_tenant = await _through_edge(edge, api.tenant + "x", "any-device", bearer)
    assert other_tenant[0] == 401
    revoke = await api.call("DELETE", api.path(f"/tokens/{created['tokenId']}"))
    assert revoke.status == 204

    async def refused() -> bool:
        return (await _through_edge(edge, api.tenant, "any-device", bearer))[0] == 401

    assert await _eventually(refused, seconds=1.0)


@pytest.mark.parametrize("edge", ["passthrough"], indirect=True)
async def test_version_change_seen_by_the_proxy_shows_in_history(
    api: Api, edge: EdgeServer
) -> None:
    headers = {
        "X-App-Name": "crew",
        "X-App-Version": "1.0",
        "X-OS-Name": "android",
        "X-OS-Version": "14",
        "X-Device-Manufacturer": "acme",
        "X-Device-Model": "x1",
    }
    assert (await _through_edge(edge, api.tenant, "seen", headers))[0] == 200

    async def history_length(n: int) -> bool:
        response = await api.call("GET", api.device_path("seen", "/history"))
        return response.status == 200 and len(await response.json()) == n

    assert await _eventually(lambda: history_length(1))
    assert (await _through_edge(edge, api.tenant, "seen", {**headers, "X-App-Version": "1.1"}))[
        0
    ] == 200
    assert await _eventually(lambda: history_length(2))
    records = await (await api.call("GET", api.device_path("seen", "/history"))).json()
    assert records[0]["changedFields"] == ["applicationVersion"]
    assert records[0]["previous"]["applicationVersion"] == "1.0"
    assert records[0]["current"]["applicationVersion"] == "1.1"
    assert records[1]["previous"] is None and records[1]["current"]["application"] == "crew"
    device = await (await api.call("GET", api.device_path("seen"))).json()
    assert device["applicationVersion"] == "1.1" and device["lastActiveAt"] is not None
    listed = await (await api.call("GET", api.path("/devices") + "?q=SEE")).json()
    assert [d["deviceId"] for d in listed] == ["seen"]
