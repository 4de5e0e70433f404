"""The block bypasses and framing defects found by an adversarial review, one test each.

Each test sends raw bytes to a real proxy in front of a recording upstream, with a device
blocked in the tenants the request aims at, and asserts what the client gets and what the
upstream saw (read the way the most forgiving upstream would: tests/recording_upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import EdgeFactory
from edgerig import raw_bytes, raw_exchange
from recording_upstream import RecordingUpstream

from gatekeeper.edge.server import EdgeServer
from gatekeeper.store import edge_writes as store

BLOCKED = "blk-7f3a"
TENANTS = {"acme", "default"}


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as recording:
        yield recording


@pytest.fixture
async def edge(
    edge_factory: EdgeFactory,
    upstream: RecordingUpstream,
    redis_client: aioredis.Redis,
    pg_pool: asyncpg.Pool,
) -> EdgeServer:
    server = await edge_factory(upstream=upstream.url)
    for tenant in TENANTS:
        await store.set_blocked(pg_pool, redis_client, tenant, BLOCKED, True, create=True)
    await _wait_blocked(server)
    return server


async def _wait_blocked(server: EdgeServer) -> None:
    for _ in range(500):
        if all(server.mirror.denial((t, BLOCKED)) is not None for t in TENANTS):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the block never reached the mirror")


def _get(target: bytes, *headers: bytes, close: bool = True) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: edge\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )


def _statuses(raw: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


# --- 1. tunnels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upgrade",
    [
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__",
        b"Upgrade: foo\r\nConnection: upgrade",
    ],
    ids=["websocket-refused", "h2c", "unknown"],
)
async def test_a_refused_upgrade_does_not_open_a_tunnel(
    edge: EdgeServer, upstream: RecordingUpstream, upgrade: bytes
) -> None:
    smuggled = _get(b"/api/acme/secret", b"X-Device-Id: " + BLOCKED.encode())
    raw = await raw_bytes(
        edge.proxy_port,
        b"GET /api/acme/refuse HTTP/1.1\r\nHost: edge\r\nX-Device-Id: fine\r\n"
        + upgrade
        + b"\r\n\r\n"
        + smuggled,
    )
    statuses = _statuses(raw)
    assert statuses[-1] == 403, raw  # the request after the upgrade was parsed and checked
    assert statuses[0] in (200, 400)  # the upstream's answer to the upgrade, relayed
    assert upstream.leaks(BLOCKED, TENANTS) == []
    assert any(s.target == "/api/acme/refuse" for s in upstream.seen)


async def test_a_websocket_tunnel_opens_only_after_101(
    edge: EdgeServer, upstream: RecordingUpstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.proxy_port)
    try:
        writer.write(
            b"GET /api/acme/ws HTTP/1.1\r\nHost: edge\r\nX-Device-Id: fine\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert raw.startswith(b"HTTP/1.1 101 "), raw


async def test_connect_is_405(edge: EdgeServer, upstream: RecordingUpstream) -> None:
    raw = await raw_bytes(
        edge.proxy_port,
        b"CONNECT upstream:80 HTTP/1.1\r\nHost: upstream:80\r\n\r\n"
        + _get(b"/api/acme/x", b"X-Device-Id: " + BLOCKED.encode()),
    )
    assert _statuses(raw) == [405]
    assert b"Allow: " in raw
    assert upstream.seen == []


# --- 2 and 3. targets and paths ---------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"http://x/api/acme/ping",
        b"/api//acme/ping",
        b"/api/./acme/ping",
        b"/api/x/../acme/ping",
        b"//api/acme/ping",
        b"/%61pi/%61cme/ping",
        b"/api/other/../../api/acme/ping",
    ],
)
async def test_a_disguised_path_to_the_tenant_is_denied(
    edge: EdgeServer, upstream: RecordingUpstream, target: bytes
) -> None:
    answer = await raw_exchange(edge.proxy_port, _get(target, b"X-Device-Id: " + BLOCKED.encode()))
    assert answer.status == 403
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://x/api/acme/ping?q=1", "/api/acme/ping?q=1"),
        (b"HTTP://x", "/"),
        (b"/api//acme/./a/b/../c/", "/api/acme/a/c/"),
        (b"/api/acme/%7euser/%3a", "/api/acme/~user/%3A"),
        (b"/api/acme/a/..", "/api/acme/"),
    ],
)
async def test_the_normalised_target_is_what_is_forwarded(
    edge: EdgeServer, upstream: RecordingUpstream, target: bytes, expected: str
) -> None:
    answer = await raw_exchange(edge.proxy_port, _get(target, b"X-Device-Id: fine"))
    assert answer.status == 200
    assert upstream.seen[-1].target == expected


async def test_absolute_form_host_replaces_the_host_header(
    edge: EdgeServer, upstream: RecordingUpstream
) -> None:
    answer = await raw_exchange(edge.proxy_port, _get(b"http://public.example/api/acme/x"))
    assert answer.status == 200
    headers = dict((n.lower(), v) for n, v in upstream.seen[-1].headers)
    assert headers[b"x-forwarded-host"] == b"public.example"


@pytest.mark.parametrize(
    "target",
    [
        b"/api%2Facme/ping",
        b"/api/x/..%2facme/ping",
        b"/api/x/%252e%252e/acme/ping",
        b"/api/x/..;/acme/ping",
        b"/API/acme/ping",
        b"/Api/acme/ping",
        b"/api;x/acme/ping",
        b"/api/ACME/ping",
        b"/api/acme;x/ping",
        b"/api/%zz/ping",
        b"/api/acme/ping#frag",
        b"/api/acme%5cx",
        b"ftp://x/api/acme",
        b"api/acme",
        b"http://user@x/api/acme",
    ],
)
async def test_a_path_without_one_reading_is_400(
    edge: EdgeServer, upstream: RecordingUpstream, target: bytes
) -> None:
    answer = await raw_exchange(edge.proxy_port, _get(target, b"X-Device-Id: " + BLOCKED.encode()))
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert upstream.seen == []


# --- 4. header-name aliases --------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"X_Device_Id", b"x_device-id", b"X-Device_Id"])
async def test_an_underscore_alias_of_the_device_header_is_400(
    edge: EdgeServer, upstream: RecordingUpstream, name: bytes
) -> None:
    answer = await raw_exchange(
        edge.proxy_port, _get(b"/api/acme/x", name + b": " + BLOCKED.encode())
    )
    assert answer.status == 400
    assert upstream.seen == []


async def test_underscore_aliases_can_be_dropped_instead(
    edge_factory: EdgeFactory, upstream: RecordingUpstream
) -> None:
    server = await edge_factory(upstream=upstream.url, underscore_headers="drop")
    answer = await raw_exchange(
        server.proxy_port,
        _get(
            b"/api/acme/x",
            b"X_Device_Id: " + BLOCKED.encode(),
            b"Transfer_Encoding: chunked",
            b"X_Custom: kept",
        ),
    )
    assert answer.status == 200
    names = {n.lower() for n, _ in upstream.seen[-1].headers}
    assert b"x_device_id" not in names and b"transfer_encoding" not in names
    assert b"x_custom" in names  # underscores that alias nothing pass


# --- HTTP framing rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /api/acme/x HTTP/1.1\r\nX-Device-Id: fine\r\n\r\n", 400),  # no Host
        (b"GET /api/acme/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Device-Id: fine\r\n\r\n", 400),
        (
            b"POST /api/acme/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\nX-Device-Id: fine\r\n\r\n"
            b"0\r\n\r\n",
            400,
        ),
        (b"GET /api/acme/x\r\n\r\n", 400),  # HTTP/0.9
        (b"GET /api/acme/x HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (
            b"POST /api/acme/x HTTP/1.1\r\nHost: a\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx",
            417,
        ),
    ],
    ids=["no-host", "two-hosts", "te-on-1.0", "http-0.9", "http-2.0-text", "expect-unknown"],
)
async def test_framing_rules_as_nginx(
    edge: EdgeServer, upstream: RecordingUpstream, data: bytes, status: int
) -> None:
    answer = await raw_exchange(edge.proxy_port, data)
    assert answer.status == status
    assert upstream.seen == []


async def test_http_1_0_without_host_is_served(
    edge: EdgeServer, upstream: RecordingUpstream
) -> None:
    answer = await raw_exchange(
        edge.proxy_port, b"GET /api/acme/x HTTP/1.0\r\nX-Device-Id: fine\r\n\r\n"
    )
    assert answer.status == 200


async def test_expect_100_continue_is_answered_once_admitted(
    edge: EdgeServer, upstream: RecordingUpstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.proxy_port)
    try:
        writer.write(
            b"POST /api/acme/up HTTP/1.1\r\nHost: edge\r\nX-Device-Id: fine\r\n"
            b"Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        final = await asyncio.wait_for(reader.read(), 5)
        assert final.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert not any(n.lower() == b"expect" for n, _ in upstream.seen[-1].headers)


async def test_expect_100_continue_from_a_blocked_device_gets_403_not_100(edge: EdgeServer) -> None:
    answer = await raw_exchange(
        edge.proxy_port,
        b"POST /api/acme/up HTTP/1.1\r\nHost: edge\r\nX-Device-Id: "
        + BLOCKED.encode()
        + b"\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    assert answer.status == 403


# --- slow and stalled uploads -----------------------------------------------------------------


async def _slow_upload(port: int, pieces: int, pause: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/acme/up HTTP/1.1\r\nHost: edge\r\nX-Device-Id: fine\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (pieces * 100)
        )
        for _ in range(pieces):
            writer.write(b"x" * 100)
            await writer.drain()
            await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_an_upload_longer_than_the_read_timeout_is_not_cut(
    edge_factory: EdgeFactory, upstream: RecordingUpstream
) -> None:
    server = await edge_factory(upstream=upstream.url, upstream_read_timeout=0.5)
    started = time.monotonic()
    raw = await _slow_upload(server.proxy_port, pieces=15, pause=0.1)
    assert time.monotonic() - started > 1.0  # three read timeouts' worth of uploading
    assert raw.startswith(b"HTTP/1.1 200 "), raw


async def test_a_stalled_upload_gets_408(
    edge_factory: EdgeFactory, upstream: RecordingUpstream
) -> None:
    server = await edge_factory(upstream=upstream.url, client_body_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.proxy_port)
    try:
        writer.write(
            b"POST /api/acme/up HTTP/1.1\r\nHost: edge\r\nX-Device-Id: fine\r\n"
            b"Content-Length: 100\r\n\r\nonly a part"
        )
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert raw.startswith(b"HTTP/1.1 408 "), raw


# --- a denied request's unread body ------------------------------------------------------------


async def test_a_denied_post_with_a_small_body_keeps_the_connection(
    edge: EdgeServer, upstream: RecordingUpstream
) -> None:
    """As nginx: the unread rest of a small body is read and dropped, and the next request on the
    connection is found where the client put it (and checked like any other)."""
    body = b"x" * 3000
    raw = await raw_bytes(
        edge.proxy_port,
        b"POST /api/acme/up HTTP/1.1\r\nHost: edge\r\nX-Device-Id: "
        + BLOCKED.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + _get(b"/api/acme/next", b"X-Device-Id: fine", close=False)
        + _get(b"/api/acme/again", b"X-Device-Id: " + BLOCKED.encode()),
    )
    assert _statuses(raw) == [403, 200, 403]
    assert [s.target for s in upstream.seen] == ["/api/acme/next"]
    assert upstream.leaks(BLOCKED, TENANTS) == []


async def test_a_denied_post_with_a_large_body_closes_the_connection(
    edge: EdgeServer, upstream: RecordingUpstream
) -> None:
    head = (
        b"POST /api/acme/up HTTP/1.1\r\nHost: edge\r\nX-Device-Id: "
        + BLOCKED.encode()
        + b"\r\nContent-Length: 1000000\r\n\r\n"
    )
    raw = await raw_bytes(edge.proxy_port, head + b"x" * 1000)
    assert _statuses(raw) == [403]  # and then the proxy closed: raw_bytes read to the end
    assert upstream.seen == []


# --- a block made while a WebSocket is open ------------------------------------------------------


@pytest.mark.parametrize("change", ["block", "disable"])
async def test_a_block_ends_the_devices_open_websocket(
    edge: EdgeServer,
    upstream: RecordingUpstream,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    change: str,
) -> None:
    """A tunnel carries no more requests to check, so the promise ("denied until unblocked")
    holds only if the block ends the tunnels the device already has open."""
    device = f"ws-{change}"
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.proxy_port)
    try:
        writer.write(
            b"GET /api/acme/ws HTTP/1.1\r\nHost: edge\r\nX-Device-Id: " + device.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        if change == "block":
            await store.set_blocked(pg_pool, redis_client, "acme", device, True, create=True)
        else:
            await store.set_blocked(pg_pool, redis_client, "acme", device, False, create=True)
            await store.set_enabled(pg_pool, redis_client, "acme", device, False)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the proxy closed the tunnel
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await store.set_blocked(pg_pool, redis_client, "acme", device, False)
        await store.set_enabled(pg_pool, redis_client, "acme", device, True)


async def test_a_block_of_another_device_leaves_a_websocket_open(
    edge: EdgeServer, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.proxy_port)
    try:
        writer.write(
            b"GET /api/acme/ws HTTP/1.1\r\nHost: edge\r\nX-Device-Id: ws-kept\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await store.set_blocked(pg_pool, redis_client, "acme", "ws-other", True, create=True)
        await asyncio.sleep(0.3)
        assert not reader.at_eof()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await store.set_blocked(pg_pool, redis_client, "acme", "ws-other", False)


async def test_a_tenant_with_a_trailing_dot_is_400(
    edge: EdgeServer, upstream: RecordingUpstream
) -> None:
    """Windows-hosted upstreams may read /api/acme./ as tenant "acme"."""
    answer = await raw_exchange(
        edge.proxy_port, _get(b"/api/acme./ping", b"X-Device-Id: " + BLOCKED.encode())
    )
    assert answer.status == 400
    assert upstream.seen == []
