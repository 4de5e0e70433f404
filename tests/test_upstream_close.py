"""Closing the upstream pool (issue 9): idle connections close at once; a busy one may finish
its exchange within the grace, after which it is cut and the cut is logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gatekeeper.edge.upstream.pool import UpstreamError, UpstreamPool

# --- UpstreamPool.close ----------------------------------------------------------------------

HEAD = b"GET / HTTP/1.1\r\nHost: upstream\r\n\r\n"
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _upstream(serve: Serve) -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A raw TCP upstream running ``serve`` per connection; its port and the connections."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await serve(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], writers
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


def _pool(port: int) -> UpstreamPool:
    return UpstreamPool(
        "127.0.0.1", port, max_connections=4, connect_timeout=2.0, read_timeout=30.0
    )


async def test_upstream_close_cuts_busy_connections_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def never_answer(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()  # until the proxy's side closes

    async with _upstream(never_answer) as (port, connections):
        pool = _pool(port)
        sending = asyncio.create_task(pool.send(HEAD, None))
        await _until(lambda: len(connections) == 1)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="gatekeeper.edge.upstream.pool"):
            await pool.close(grace=0.3)
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 2.0
        with pytest.raises(UpstreamError):
            await sending
        assert "upstream: 1 busy connection(s) cut at shutdown" in caplog.text


async def test_upstream_close_lets_an_exchange_end_within_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def answer_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()

    async def exchange(pool: UpstreamPool) -> bytes | None:
        response = await pool.send(HEAD, None)
        body = response.body_if_complete()
        response.release()  # put back while closing: closed, not kept
        return body

    async with _upstream(answer_late) as (port, connections):
        pool = _pool(port)
        sending = asyncio.create_task(exchange(pool))
        await _until(lambda: len(connections) == 1)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="gatekeeper.edge.upstream.pool"):
            await pool.close(grace=5.0)
        assert time.monotonic() - started < 2.0  # returned when the exchange ended
        assert await sending == b"ok"
        assert "cut at shutdown" not in caplog.text
        assert not pool._busy()


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    """A connection opened at a peak is not kept for good (nginx's upstream keepalive_timeout);
    one in use within the timeout is kept."""
    closed_by_proxy: list[bool] = []

    async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending = b""
        while data := await reader.read(65536):
            pending += data
            while b"\r\n\r\n" in pending:
                pending = pending.partition(b"\r\n\r\n")[2]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        closed_by_proxy.append(True)  # end of stream: the proxy's side closed

    async with _upstream(answer_each) as (port, connections):
        pool = UpstreamPool(
            "127.0.0.1",
            port,
            max_connections=4,
            connect_timeout=2.0,
            read_timeout=1.0,  # the watchdog looks every 0.1 s
            idle_timeout=0.4,
        )
        try:
            for _ in range(3):  # reused within the timeout: one connection throughout
                response = await pool.send(HEAD, None)
                assert response.body_if_complete() == b"ok"
                response.release()
                await asyncio.sleep(0.2)
            assert len(connections) == 1 and closed_by_proxy == []
            await _until(lambda: closed_by_proxy == [True])
            assert pool.idle_connection() is None
        finally:
            await pool.close(grace=1.0)
