"""Forwarding: methods, streamed bodies, hop-by-hop headers, X-Forwarded-*, request ids, upstream
failures (502/504), the body limit (413), WebSockets and upstream connection reuse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import EdgeFactory
from proberig import ProbeUpstream

from gatekeeper.runtime.embedded import free_port

MB = 1024 * 1024


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[ProbeUpstream, str]]:
    server = ProbeUpstream()
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield server, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        yield client


async def _proxy_url(edge_factory: EdgeFactory, upstream_url: str, **overrides: Any) -> str:
    edge = await edge_factory(upstream=upstream_url, **overrides)
    return f"http://127.0.0.1:{edge.proxy_port}"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded_with_path_query_and_body(
    method: str,
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1])
    async with session.request(
        method,
        f"{base}/api/{tenant}/things/1?x=1&y=%20",
        data=b"payload",
        headers={"X-Device-Id": "m-1"},
    ) as response:
        assert response.status == 200
        echoed = await response.json()
    assert echoed["method"] == method
    assert echoed["path"] == f"/api/{tenant}/things/1?x=1&y=%20"
    assert echoed["body"] == "payload"


async def test_head_is_forwarded_without_a_body_and_the_connection_stays_usable(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1])
    for _ in range(3):
        async with session.head(f"{base}/api/{tenant}/x") as response:
            assert response.status == 200
            assert await response.read() == b""
        async with session.get(f"{base}/api/{tenant}/x") as response:
            assert (await response.json())["method"] == "GET"


async def test_hop_by_hop_headers_are_removed_both_ways(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1])
    sent = {
        "Connection": "keep-alive, X-Private",
        "X-Private": "drop me",
        "Keep-Alive": "300",
        "TE": "trailers",
        "Trailer": "X-T",
        "Proxy-Authorization": "Basic Zm9v",
        "Proxy-Connection": "keep-alive",
        "X-Kept": "yes",
    }
    async with session.get(f"{base}/api/{tenant}/echo", headers=sent) as response:
        received = {k.lower() for k in (await response.json())["headers"]}
    for name in (
        "x-private",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert name not in received, name
    assert "x-kept" in received
    async with session.get(f"{base}/api/{tenant}/hop".replace(f"/api/{tenant}", "")) as response:
        assert response.status == 200
        assert response.headers.get("X-Resp-Public") == "ok"
        assert "X-Resp-Private" not in response.headers
        assert "Proxy-Authenticate" not in response.headers
        assert "Keep-Alive" not in response.headers


async def test_forwarded_headers_are_set_and_client_copies_not_trusted(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1])
    spoof = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Host": "api.example.com",
    }
    async with session.get(f"{base}/api/{tenant}/echo", headers=spoof) as response:
        headers = (await response.json())["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "api.example.com"
    assert headers["Host"] == upstream[1].removeprefix("http://")


async def test_forwarded_headers_are_appended_when_trusted(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1], trust_forwarded_headers=True)
    async with session.get(
        f"{base}/api/{tenant}/echo",
        headers={"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"},
    ) as response:
        headers = (await response.json())["headers"]
    assert headers["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-123_abc.DEF:9", True),
        ("has space", False),
        ("x" * 500, False),
        (None, False),
    ],
)
async def test_request_id_is_kept_when_sane_else_generated(
    given: str | None,
    kept: bool,
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1])
    headers = {} if given is None else {"X-Request-Id": given}
    async with session.get(f"{base}/api/{tenant}/echo", headers=headers) as response:
        echoed = {k.lower(): v for k, v in (await response.json())["headers"].items()}
        seen = echoed["x-request-id"]
        returned = response.headers["X-Request-Id"]
    assert seen == returned
    if kept:
        assert seen == given
    else:
        assert seen != given and len(seen) == 32


async def test_unreachable_upstream_is_502_problem(
    edge_factory: EdgeFactory,
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, f"http://127.0.0.1:{free_port()}")
    async with session.get(f"{base}/api/{tenant}/x", headers={"X-Device-Id": "d"}) as response:
        assert response.status == 502
        assert response.content_type == "application/problem+json"
        assert (await response.json())["status"] == 502


async def test_slow_upstream_is_504_problem(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1], upstream_read_timeout=0.3)
    async with session.get(f"{base}/slow?s=2") as response:
        assert response.status == 504
        assert response.content_type == "application/problem+json"
    async with session.get(f"{base}/api/{tenant}/after") as response:
        assert response.status == 200  # the timed-out connection was not reused


async def test_body_over_the_limit_is_413_and_not_forwarded(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    server, url = upstream
    base = await _proxy_url(edge_factory, url, max_body_bytes=1000)
    async with session.post(f"{base}/sink", data=b"x" * 1001) as response:
        assert response.status == 413
        assert response.content_type == "application/problem+json"
    assert server.requests == 0

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 500

    async with session.post(f"{base}/sink", data=chunks()) as response:
        assert response.status == 413
    async with session.post(f"{base}/sink", data=b"x" * 1000) as response:
        assert (await response.json())["bytes"] == 1000


async def test_chunked_upload_is_forwarded_chunked(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1])

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(50):
            yield bytes([65 + i % 26]) * 1000

    async with session.post(f"{base}/sink", data=chunks()) as response:
        assert await response.json() == {"bytes": 50_000, "chunked": True}


async def test_websocket_upgrade_is_proxied(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    base = await _proxy_url(edge_factory, upstream[1])
    async with session.ws_connect(f"{base}/ws", headers={"X-Device-Id": "ws-1"}) as socket:
        await socket.send_str("hello")
        assert (await socket.receive(timeout=5)).data == "echo:hello"
        await socket.send_bytes(b"abc")
        assert (await socket.receive(timeout=5)).data == b"cba"


async def test_upstream_connections_are_kept_alive_and_reused(
    edge_factory: EdgeFactory,
    upstream: tuple[ProbeUpstream, str],
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    server, url = upstream
    base = await _proxy_url(edge_factory, url)
    for i in range(50):
        async with session.get(f"{base}/api/{tenant}/n/{i}") as response:
            assert response.status == 200
    assert server.requests == 50
    assert len(server.peers) == 1
