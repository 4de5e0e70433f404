"""The proxy's own HTTP/1.1 framing, over raw sockets: pipelining, keep-alive and close,
HTTP/1.0, and the problem documents for requests it cannot parse or will not take."""

from __future__ import annotations

import asyncio
import json

from conftest import EdgeFactory


async def _exchange(port: int, payload: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        if until_close:
            return await asyncio.wait_for(reader.read(), 10)
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a stream of Content-Length-framed responses."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        raw = rest[length:]
    return out


async def test_pipelined_requests_are_answered_in_order(
    edge_factory: EdgeFactory,
    tenant: str,
) -> None:
    edge = await edge_factory()
    payload = b"".join(
        f"GET /api/{tenant}/n/{i} HTTP/1.1\r\nHost: x\r\nX-Device-Id: p-{i}\r\n\r\n".encode()
        for i in range(5)
    )
    payload += f"GET /api/{tenant}/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    responses = _responses(await _exchange(edge.proxy_port, payload))
    paths = [json.loads(body)["path"] for _, _, body in responses]
    assert paths == [f"/api/{tenant}/n/{i}" for i in range(5)] + [f"/api/{tenant}/last"]
    assert responses[-1][1]["connection"] == "close"


async def test_http_10_request_gets_an_answer_and_a_close(
    edge_factory: EdgeFactory,
    tenant: str,
) -> None:
    edge = await edge_factory()
    raw = await _exchange(edge.proxy_port, f"GET /api/{tenant}/old HTTP/1.0\r\n\r\n".encode())
    ((status, headers, body),) = _responses(raw)
    assert status == 200
    assert headers["connection"] == "close"
    assert json.loads(body)["path"] == f"/api/{tenant}/old"


async def test_unparseable_request_is_400_problem_and_closed(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory()
    raw = await _exchange(edge.proxy_port, b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n")
    ((status, headers, body),) = _responses(raw)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 400


async def test_too_many_or_too_large_headers_are_431(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory()
    many = "".join(f"X-H{i}: v\r\n" for i in range(150))
    raw = await _exchange(edge.proxy_port, f"GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
    assert _responses(raw)[0][0] == 431
    huge = "X-Big: " + "a" * 40_000 + "\r\n"
    raw = await _exchange(edge.proxy_port, f"GET / HTTP/1.1\r\nHost: x\r\n{huge}\r\n".encode())
    status, headers, _ = _responses(raw)[0]
    assert status == 431 and headers["content-type"] == "application/problem+json"
    # The proxy keeps serving.
    raw = await _exchange(
        edge.proxy_port, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert _responses(raw)[0][0] == 200
