"""The admin API's surroundings: OpenAPI document vs. served routes, metrics, health and
readiness, the catch-all error, Redis failing after Postgres committed, and the service."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import prometheus_client
import pytest
import redis.asyncio as aioredis
from conftest import Stores
from test_admin_helpers import Api, admin_settings, problem, running_api

from admin_api.app import create_app
from admin_api.metrics import METRICS
from admin_api.openapi import build_document
from admin_api.service import AdminService
from gatekeeper.domain import edgeview
from gatekeeper.store.clients import open_pg_pool, open_redis


def test_openapi_lists_exactly_the_served_routes(stores: Stores) -> None:
    settings = admin_settings(stores.pg_url, stores.redis_url)
    app = create_app(settings, None, None)  # type: ignore[arg-type]  # routes only
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        # The web console's HTML pages and forms are not API (docs/console.md).
        and not route.resource.canonical.startswith("/console")
    }
    doc = build_document()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_openapi_document_is_complete() -> None:
    doc = build_document()
    assert doc["openapi"] == "3.1.0"
    for ref in _refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "500" in op["responses"], (method, path)
            if op["security"] and "bearerAuth" in op["security"][0]:
                assert {"401", "403"} <= set(op["responses"]), (method, path)
            if "requestBody" in op:
                assert {"400", "413", "415", "422"} <= set(op["responses"]), (method, path)
            placeholders = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
            assert placeholders <= {p["name"] for p in op["parameters"]}, (method, path)


async def test_openapi_is_served(api: Api) -> None:
    # /docs, the explorer of this document: tests/test_admin_explorer.py.
    response = await api.call("GET", "/openapi.json", auth=False)
    assert response.status == 200 and (await response.json())["openapi"] == "3.1.0"


async def test_metrics_use_route_templates_on_an_own_registry(api: Api) -> None:
    await api.create_device("m1")
    await api.call("GET", api.device_path("m1"))
    await api.call("GET", api.device_path("nope"))
    await api.call("GET", "/no/such/path", auth=False)
    text = await (await api.call("GET", "/metrics", auth=False)).text()
    assert (
        'gatekeeper_admin_requests_total{method="GET",route="/api/{tenantId}/devices/'
        '{deviceId}",status="200"}'
    ) in text
    assert 'status="404"' in text and 'route="unmatched"' in text
    assert "m1" not in text and api.tenant not in text
    assert "gatekeeper_admin_request_duration_seconds_bucket" in text
    assert "gatekeeper_admin_edge_sync_errors_total" in text
    assert prometheus_client.REGISTRY.get_sample_value("gatekeeper_admin_requests_total") is None


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.call("GET", "/healthz", auth=False)).status == 200
    ready = await api.call("GET", "/readyz", auth=False)
    assert ready.status == 200 and await ready.json() == {
        "status": "ready",
        "checks": {"postgres": True, "redis": True},
        "reasons": [],
    }


async def test_method_not_allowed_is_a_problem(api: Api) -> None:
    response = await api.call("PATCH", api.path("/devices"))
    await problem(response, 405)
    assert "GET" in response.headers["Allow"]


async def test_unexpected_errors_are_a_bare_500(
    stores: Stores, tenant: str, redis_client: aioredis.Redis
) -> None:
    pool = await open_pg_pool(stores.pg_url)
    await pool.close()  # every query now fails with an error no handler expects
    settings = admin_settings(stores.pg_url, stores.redis_url)
    async with running_api(settings, pool, redis_client, tenant) as api:
        body = await problem(await api.call("GET", api.device_path("d")), 500)
        assert body["detail"] == "An unexpected error occurred"
        assert "pool" not in str(body).lower()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _forwarder(port: int, target: tuple[str, int]) -> AsyncIterator[None]:
    """A TCP relay on ``port`` to ``target``: Redis 'comes back' when this starts."""
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        writers.extend((writer, up_writer))
        for coro in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await server.wait_closed()


async def test_redis_failure_after_commit_succeeds_and_reconciles(
    stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    port = _unused_port()
    dead_redis = open_redis(f"redis://127.0.0.1:{port}/0")
    settings = admin_settings(stores.pg_url, stores.redis_url)
    member = edgeview.member(tenant, "sync")
    try:
        async with running_api(settings, pg_pool, dead_redis, tenant) as api:
            await api.create_device("sync")
            response = await api.call(
                "POST", api.device_path("sync", "/block"), json={"reason": "r"}
            )
            assert response.status == 200 and (await response.json())["isBlocked"]
            assert await pg_pool.fetchval(
                "SELECT is_blocked FROM devices WHERE tenant_id = $1 AND device_id = 'sync'", tenant
            )
            metrics = api.app[METRICS]
            assert (
                metrics.registry.get_sample_value("gatekeeper_admin_edge_sync_errors_total") == 1.0
            )
            unready = await api.call("GET", "/readyz", auth=False)
            assert unready.status == 503
            assert await unready.json() == {
                "status": "not ready",
                "checks": {"postgres": True, "redis": False},
                "reasons": ["redis unreachable"],
            }
            # A new secret whose edge write failed cannot be shown: 503, retry.
            await problem(await api.call("POST", api.path("/tokens"), json={"name": "t"}), 503)
            assert not await redis_client.sismember(edgeview.BLOCKED_SET, member)
            redis_address = ("127.0.0.1", int(stores.redis_url.rsplit(":", 1)[1].split("/")[0]))
            async with _forwarder(port, redis_address):
                for _ in range(100):
                    if await redis_client.sismember(edgeview.BLOCKED_SET, member):
                        break
                    await asyncio.sleep(0.1)
                assert await redis_client.sismember(edgeview.BLOCKED_SET, member)
                for _ in range(250):  # the counter moves just after the publish
                    if metrics.registry.get_sample_value(
                        "gatekeeper_admin_reconcile_total", {"outcome": "ok"}
                    ):
                        break
                    await asyncio.sleep(0.02)
                # At least one reconcile succeeded (a retry scheduled meanwhile may add another).
                assert (
                    metrics.registry.get_sample_value(
                        "gatekeeper_admin_reconcile_total", {"outcome": "ok"}
                    )
                    or 0
                ) >= 1.0
    finally:
        await dead_redis.aclose()


async def test_service_starts_serves_and_stops(stores: Stores, tenant: str) -> None:
    settings = admin_settings(stores.pg_url, stores.redis_url)
    service = AdminService(settings)
    await service.start()
    try:
        assert service.port > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{service.port}/readyz") as response:
                assert response.status == 200
            async with session.get(
                f"http://127.0.0.1:{service.port}/api/{tenant}/devices",
            ) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "***" not in repr(service) or "password" not in repr(service)
    finally:
        await service.stop()
    with pytest.raises(RuntimeError):
        _ = service.port
