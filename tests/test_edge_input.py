"""Hostile and malformed input at the edge, sent as raw bytes over a socket.

Whatever a client sends, the proxy answers 4xx (never 5xx), does not forward it, and keeps
serving. Device-identification errors are the proxy's own ``400`` problem documents; errors the
HTTP parser raises before the proxy sees a request (control characters, too many or too large
headers, broken framing) are answered by the server layer and are only required to be 4xx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import EdgeFactory
from edgerig import CountingUpstream, raw_exchange

from gatekeeper.edge.server import EdgeServer
from gatekeeper.store import edge_writes as store

PROBLEM = "application/problem+json"
ATTRIBUTE_HEADERS = (
    "X-App-Name",
    "X-App-Version",
    "X-OS-Name",
    "X-OS-Version",
    "X-Device-Manufacturer",
    "X-Device-Model",
)


@pytest.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    async with CountingUpstream() as counting:
        yield counting


@pytest.fixture
async def edge(edge_factory: EdgeFactory, upstream: CountingUpstream) -> EdgeServer:
    return await edge_factory(upstream=upstream.url)


def _request(tenant: str, *headers: bytes, path: bytes | None = None) -> bytes:
    target = path if path is not None else b"/api/%s/things" % tenant.encode()
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
    )


async def _still_serves(edge: EdgeServer, upstream: CountingUpstream, tenant: str) -> None:
    before = upstream.by_device["fine"]
    answer = await raw_exchange(edge.proxy_port, _request(tenant, b"X-Device-Id: fine"))
    assert answer.status == 200 and upstream.by_device["fine"] == before + 1


# The edge's own rule (contract): 400 problem+json naming the header, nothing forwarded.
IDENTITY_ERRORS = {
    "device id of 129 characters": [b"X-Device-Id: " + b"d" * 129],
    "device id with a space": [b"X-Device-Id: a b"],
    "device id with a tab": [b"X-Device-Id: a\tb"],
    "device id in UTF-8": [b"X-Device-Id: caf\xc3\xa9"],
    "device id in latin-1": [b"X-Device-Id: caf\xe9"],
    "empty device id": [b"X-Device-Id: "],
    "app name of 8 KB+": [b"X-Device-Id: d1", b"X-App-Name: " + b"a" * 9000],
    "app name not UTF-8": [b"X-Device-Id: d1", b"X-App-Name: \xff\xfe"],
    **{
        f"{name} of 257 characters": [b"X-Device-Id: d1", name.encode() + b": " + b"v" * 257]
        for name in ATTRIBUTE_HEADERS
    },
}


@pytest.mark.parametrize("headers", IDENTITY_ERRORS.values(), ids=IDENTITY_ERRORS.keys())
async def test_bad_device_headers_are_400_problems_and_not_forwarded(
    headers: list[bytes],
    edge: EdgeServer,
    upstream: CountingUpstream,
    tenant: str,
) -> None:
    answer = await raw_exchange(edge.proxy_port, _request(tenant, *headers))
    assert answer.status == 400
    assert answer.headers["content-type"] == PROBLEM
    assert b'"title":"Invalid device identification"' in answer.body
    assert upstream.requests == 0
    await _still_serves(edge, upstream, tenant)


async def test_bad_tenant_in_path_is_a_400_problem(
    edge: EdgeServer,
    upstream: CountingUpstream,
    tenant: str,
) -> None:
    answer = await raw_exchange(
        edge.proxy_port, _request(tenant, b"X-Device-Id: d1", path=b"/api/bad$tenant!/things")
    )
    assert answer.status == 400 and answer.headers["content-type"] == PROBLEM
    assert upstream.requests == 0


# Refused by the HTTP layer before the proxy's handler runs: any 4xx, never forwarded.
PARSER_ERRORS = {
    "control character in device id": _request("t", b"X-Device-Id: a\x01b"),
    "NUL in a header value": _request("t", b"X-Device-Id: d1", b"X-App-Name: a\x00b"),
    "control character in app name": _request("t", b"X-Device-Id: d1", b"X-App-Name: a\x1bb"),
    "DEL in app name": _request("t", b"X-Device-Id: d1", b"X-App-Name: a\x7fb"),
    "header line without a colon": _request("t", b"X-Device-Id d1"),
    "space before the colon": _request("t", b"X-Device-Id : d1"),
    "500 headers": _request("t", b"X-Device-Id: d1", *(b"X-Filler-%d: x" % i for i in range(500))),
    "a 40 KB header line": _request("t", b"X-Device-Id: d1", b"X-Filler: " + b"f" * 40_000),
    "a 40 KB request line": b"GET /api/t/" + b"p" * 40_000 + b" HTTP/1.1\r\nHost: e\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "Content-Length and chunked together": (
        b"POST /api/t/x HTTP/1.1\r\nHost: e\r\nX-Device-Id: d1\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two Content-Lengths": (
        b"POST /api/t/x HTTP/1.1\r\nHost: e\r\nX-Device-Id: d1\r\n"
        b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
}


@pytest.mark.parametrize("raw", PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
async def test_malformed_requests_are_4xx_and_not_forwarded(
    raw: bytes,
    edge: EdgeServer,
    upstream: CountingUpstream,
    tenant: str,
) -> None:
    answer = await raw_exchange(edge.proxy_port, raw)
    assert 400 <= answer.status < 500, answer
    assert upstream.requests == 0
    await _still_serves(edge, upstream, tenant)


@pytest.mark.parametrize(
    "headers",
    [
        [b"X-Device-Id: " + bytes(range(0x21, 0x7F)) + b"-" * (128 - 94)],
        [b"X-Device-Id: d1", *(name.encode() + b": " + b"v" * 256 for name in ATTRIBUTE_HEADERS)],
        [b"X-Device-Id: d1", b"X-App-Name: Caf\xc3\xa9 \xe2\x9c\x93", b"X-Device-Model: Pixel 8"],
    ],
    ids=[
        "device id of 128 printable characters",
        "attributes of 256 characters",
        "attributes in UTF-8 with spaces",
    ],
)
async def test_values_at_the_limits_are_forwarded(
    headers: list[bytes],
    edge: EdgeServer,
    upstream: CountingUpstream,
    tenant: str,
) -> None:
    answer = await raw_exchange(edge.proxy_port, _request(tenant, *headers))
    assert answer.status == 200 and upstream.requests == 1


@pytest.mark.parametrize("order", ["blocked first", "blocked last"])
async def test_repeated_device_id_header_is_refused(
    order: str,
    edge: EdgeServer,
    upstream: CountingUpstream,
    tenant: str,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
) -> None:
    await store.set_blocked(pg_pool, redis_client, tenant, "evil", True, create=True)
    headers = [b"X-Device-Id: evil", b"X-Device-Id: innocent"]
    if order == "blocked last":
        headers.reverse()
    blocked = await raw_exchange(edge.proxy_port, _request(tenant, b"X-Device-Id: evil"))
    assert blocked.status == 403  # the mirror has the block
    answer = await raw_exchange(edge.proxy_port, _request(tenant, *headers))
    assert upstream.requests == 0
    assert answer.status == 400 and answer.headers["content-type"] == PROBLEM


async def test_bad_chunk_framing_is_answered_400_and_never_completes_upstream(
    edge: EdgeServer,
    upstream: CountingUpstream,
    tenant: str,
) -> None:
    raw = (
        b"POST /api/%s/x HTTP/1.1\r\nHost: e\r\nX-Device-Id: d1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" % tenant.encode()
    )
    answer = await raw_exchange(edge.proxy_port, raw)
    assert answer.status == 400
    await _still_serves(edge, upstream, tenant)
    assert upstream.by_device["d1"] == 0 or upstream.completed == 1  # only "fine" completed
