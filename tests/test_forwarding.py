"""Forwarding: methods, streamed bodies, hop-by-hop headers, X-Forwarded-*, request ids, upstream
failures (502/504), the body limit (413), WebSockets and upstream connection reuse."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import EdgeFactory, Stores

from gatekeeper.runtime.embedded import free_port

MB = 1024 * 1024


class ProbeUpstream:
    """An upstream that shows the proxy's effects: echo, sink, source, slow, odd headers."""

    def __init__(self) -> None:
        self.requests = 0
        self.peers: set[tuple[str, int]] = set()
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/sink", self.sink)
        app.router.add_get("/source", self.source)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/hop", self.hop)
        app.router.add_get("/ws", self.ws)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.app = app

    def _count(self, request: web.Request) -> None:
        self.requests += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((peer[0], peer[1]))

    async def echo(self, request: web.Request) -> web.Response:
        self._count(request)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body.decode(),
            }
        )

    async def sink(self, request: web.Request) -> web.Response:
        self._count(request)
        size = 0
        async for chunk in request.content.iter_chunked(MB):
            size += len(chunk)
        return web.json_response({"bytes": size, "chunked": "Transfer-Encoding" in request.headers})

    async def source(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        total = int(request.query["bytes"])
        response = web.StreamResponse()
        if request.query.get("length") == "1":
            response.content_length = total
        await response.prepare(request)
        block = b"x" * (256 * 1024)
        sent = 0
        while sent < total:
            piece = block[: min(len(block), total - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        self._count(request)
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="late")

    async def hop(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.Response(
            text="hop",
            headers={
                "Connection": "keep-alive, X-Resp-Private",
                "X-Resp-Private": "secret",
                "Keep-Alive": "timeout=5",
                "X-Resp-Public": "ok",
                "Proxy-Authenticate": "Basic",
            },
        )

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self._count(request)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for msg in socket:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await socket.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await socket.send_bytes(msg.data[::-1])
        return socket


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


# --- large bodies through a proxy process, watching its memory -------------------------------


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def proxy_process(stores: Stores, upstream: tuple[ProbeUpstream, str]) -> Iterator[tuple[int, str]]:
    port, metrics_port = free_port(), free_port()
    env = dict(
        os.environ,
        GATEKEEPER_DATABASE_URL=stores.pg_url,
        GATEKEEPER_REDIS_URL=stores.redis_url,
        GATEKEEPER_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatekeeper",
            "proxy",
            "--upstream",
            upstream[1],
            "--proxy-port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
    )
    try:
        yield proc.pid, f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_serving(base: str, session: aiohttp.ClientSession) -> None:
    for _ in range(200):
        try:
            async with session.get(f"{base}/warm") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("proxy process did not serve")


async def test_50_mb_upload_and_download_stream_without_buffering(
    proxy_process: tuple[int, str],
    session: aiohttp.ClientSession,
) -> None:
    pid, base = proxy_process
    await _wait_serving(base, session)
    # Warm both paths with small bodies so steady-state allocations are already counted.
    async with session.post(f"{base}/sink", data=b"w" * MB) as response:
        assert (await response.json())["bytes"] == MB
    async with session.get(f"{base}/source?bytes={MB}") as response:
        assert len(await response.read()) == MB
    before = _peak_rss_kib(pid)

    async def upload() -> AsyncIterator[bytes]:
        block = b"u" * (256 * 1024)
        for _ in range(200):
            yield block

    async with session.post(
        f"{base}/sink", data=upload(), headers={"Content-Length": str(50 * MB)}
    ) as response:
        assert (await response.json())["bytes"] == 50 * MB
    for length in ("1", "0"):  # with a Content-Length, and chunked
        received = 0
        async with session.get(f"{base}/source?bytes={50 * MB}&length={length}") as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(MB):
                received += len(chunk)
        assert received == 50 * MB
    growth_mib = (_peak_rss_kib(pid) - before) / 1024
    print(f"\nproxy peak RSS growth over 3 x 50 MB transfers: {growth_mib:.1f} MiB")
    assert growth_mib < 8


async def test_upstream_closing_idle_connections_costs_no_request(
    edge_factory: EdgeFactory,
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    server = ProbeUpstream()
    # The upstream drops idle keep-alive connections almost at once, as upstreams do after
    # their own keep-alive timeout: the proxy must not answer 502 for that.
    runner = web.AppRunner(server.app, access_log=None, keepalive_timeout=0.05)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        base = await _proxy_url(edge_factory, f"http://127.0.0.1:{runner.addresses[0][1]}")
        for method in ("GET", "DELETE", "GET"):
            async with session.request(method, f"{base}/api/{tenant}/idle") as response:
                assert response.status == 200
            await asyncio.sleep(0.2)
        assert server.requests == 3
    finally:
        await runner.cleanup()
