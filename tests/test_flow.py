"""Write back-pressure: the FlowControl class alone, then a real proxy whose client stops
reading and goes away while the proxy's writes are paused."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from conftest import EdgeFactory

from gatekeeper.edge.http.flow import FlowControl
from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.edge.server import EdgeServer

# --- the class ------------------------------------------------------------------------------


async def test_resume_wakes_a_waiter() -> None:
    flow = FlowControl()
    flow.pause_writing()
    waiter = asyncio.create_task(flow.drain())
    await asyncio.sleep(0)
    assert not waiter.done()
    flow.resume_writing()
    await asyncio.wait_for(waiter, 1.0)
    assert not flow.writing_paused


async def test_drain_returns_at_once_when_not_paused() -> None:
    flow = FlowControl()
    await flow.drain()  # would hang if it made a waiter nobody resolves
    flow.pause_writing()
    flow.resume_writing()
    await flow.drain()
    assert flow._waiter is None


async def test_lost_connection_while_paused_raises_in_the_waiter() -> None:
    flow = FlowControl()
    flow.pause_writing()
    waiter = asyncio.create_task(flow.drain())
    await asyncio.sleep(0)
    flow.connection_lost(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError, match="gone"):
        await asyncio.wait_for(waiter, 1.0)
    # The bytes will never go: a later drain must not wait for a resume that cannot come.
    with pytest.raises(ConnectionResetError, match="gone"):
        await flow.drain()


async def test_the_first_loss_is_the_one_reported() -> None:
    # An owner that gives up (a timeout) before the transport reports the close.
    flow = FlowControl()
    flow.pause_writing()
    flow.connection_lost(TimeoutError("gave up"))
    flow.connection_lost(ConnectionResetError("closed"))
    with pytest.raises(TimeoutError, match="gave up"):
        await flow.drain()


async def test_lost_connection_when_not_paused_changes_nothing() -> None:
    flow = FlowControl()
    flow.connection_lost(ConnectionResetError("gone"))
    await flow.drain()  # nothing was stuck, nothing to report


async def test_no_waiter_means_no_future_and_nothing_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flow = FlowControl()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        flow.pause_writing()
        assert flow._waiter is None  # pausing alone allocates nothing
        flow.connection_lost(ConnectionResetError("gone"))
        del flow
        gc.collect()
        await asyncio.sleep(0)  # the loop's exception handler runs in a callback
    assert not _unretrieved(caplog)


async def test_a_cancelled_drain_leaves_no_waiter_behind() -> None:
    flow = FlowControl()
    flow.pause_writing()
    waiter = asyncio.create_task(flow.drain())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert flow._waiter is None
    again = asyncio.create_task(flow.drain())  # a live waiter, not the cancelled one
    await asyncio.sleep(0)
    flow.resume_writing()
    await asyncio.wait_for(again, 1.0)


# --- through a real proxy -------------------------------------------------------------------

WHOLE = 32 * 1024  # arrives in one read: answered from the upstream's callback, never drained
STREAMED = 16 * 1024 * 1024  # far more than the socket buffers: the handler waits in drain()
_BLOCK = b"s" * (256 * 1024)


async def _upstream_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers ``.../small``, ``.../blob?bytes=N`` (head and body in one write, so the proxy
    reads the response whole) and ``.../source?bytes=N`` (written block by block)."""
    head = await reader.readuntil(b"\r\n\r\n")
    name, _, size = head.split(b" ", 2)[1].rpartition(b"/")[2].partition(b"?bytes=")
    total = int(size or 5)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
    if name == b"source":
        for start in range(0, total, len(_BLOCK)):
            writer.write(_BLOCK[: total - start])
            await writer.drain()
    else:
        writer.write(b"small" if name == b"small" else b"w" * total)


async def _serve_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:  # keep-alive: the proxy reuses its upstream connections
            await _upstream_exchange(reader, writer)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the proxy closed the connection (idle, or after a client went away mid-body)
    finally:
        writer.close()


@pytest.fixture
async def large_upstream() -> AsyncIterator[str]:
    server = await asyncio.start_server(_serve_upstream, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


def _unretrieved(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and "exception was never retrieved" in r.getMessage()
    ]


def _proxy_side(edge: EdgeServer) -> ClientConnection | None:
    assert edge._server is not None
    return next(iter(edge._server.connections), None)


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def _cramp(edge: EdgeServer) -> None:
    """Shrink the proxy's side of the one client connection, so the kernel cannot absorb a
    response (loopback buffers grow to megabytes) and what is left waits in the transport."""
    await _until(lambda: _proxy_side(edge) is not None)
    conn = _proxy_side(edge)
    assert conn is not None and conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.transport.set_write_buffer_limits(high=8192)


def _writes_paused(edge: EdgeServer) -> bool:
    # Past the high-water mark the transport has called pause_writing().
    conn = _proxy_side(edge)
    transport = conn.transport if conn is not None else None
    return (
        transport is not None
        and transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
    )


async def _get(loop: asyncio.AbstractEventLoop, client: socket.socket, path: str) -> None:
    await loop.sock_sendall(client, f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())


@pytest.mark.parametrize(
    "path", [f"blob?bytes={WHOLE}", f"source?bytes={STREAMED}"], ids=["whole-body", "streamed"]
)
async def test_client_gone_while_writes_are_paused_leaves_no_unretrieved_future(
    path: str,
    edge_factory: EdgeFactory,
    large_upstream: str,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    edge = await edge_factory(upstream=large_upstream)
    loop = asyncio.get_running_loop()
    client = socket.socket()
    # A small receive window, so the proxy's socket buffer fills and its transport pauses.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    with caplog.at_level(logging.ERROR):
        await loop.sock_connect(client, ("127.0.0.1", edge.proxy_port))
        await _cramp(edge)
        # A first small request leaves an idle upstream connection, so the large one takes the
        # proxy's fast path (answered from the upstream connection's callbacks).
        await _get(loop, client, f"/api/{tenant}/small")
        answer = b""
        while not answer.endswith(b"small"):
            answer += await asyncio.wait_for(loop.sock_recv(client, 4096), 5.0)
        await _get(loop, client, f"/api/{tenant}/{path}")
        await _until(lambda: _writes_paused(edge))
        # Close with unread data and no linger: a reset, as a client that crashes or gives up.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await _until(lambda: _proxy_side(edge) is None)
        await asyncio.sleep(0.2)  # let the handler (and its upstream stream) wind down
        gc.collect()  # a lost future is reported when collected (the connection is a cycle)
        await asyncio.sleep(0.05)
    assert not _unretrieved(caplog)
    # Nor is a client leaving mid-answer the handler's error.
    assert not [r for r in caplog.records if r.name.startswith("gatekeeper")], caplog.text
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/small") as response,
    ):
        assert response.status == 200
        assert await response.text() == "small"


@pytest.fixture
async def deaf_upstream() -> AsyncIterator[str]:
    """Reads a request head, then nothing: the proxy's writes of the body pause for good."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        held.append(writer)  # kept open, unread, until the test ends

    listener = socket.socket()
    # A small receive window, so the proxy's body fills the buffers in kilobytes, not megabytes.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(accept, sock=listener)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_an_upstream_that_stops_reading_the_body_is_504_and_logs_nothing(
    edge_factory: EdgeFactory,
    deaf_upstream: str,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The read timer runs only while the proxy waits for room (drain_within_timeout); when it
    # fires, the pending drain fails with UpstreamTimeout, which the proxy answers with 504.
    edge = await edge_factory(upstream=deaf_upstream, upstream_read_timeout=0.3)
    size = 64 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.proxy_port)

    async def upload() -> None:
        writer.write(
            f"POST /api/{tenant}/up HTTP/1.1\r\nHost: edge\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        block = b"u" * (256 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(block)):
                writer.write(block)
                await writer.drain()

    sending = asyncio.create_task(upload())
    try:
        with caplog.at_level(logging.ERROR):
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            assert raw.startswith(b"HTTP/1.1 504 "), raw
            await asyncio.wait_for(sending, 10.0)  # the proxy closed: the upload stops
            gc.collect()
            await asyncio.sleep(0.05)
    finally:
        sending.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert not _unretrieved(caplog)
    assert not [r for r in caplog.records if r.name.startswith("gatekeeper")], caplog.text
