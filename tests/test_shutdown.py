"""Shutdown: the HTTP server's hard phase cuts what the drain left; a failed start leaves nothing
behind; process-wide settings stay with the commands (docs/decisions.md, "Shutdown (issue 9)").
The blocklist mirror's own cancellation and clock: tests/test_mirror_lifecycle.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from conftest import EdgeFactory, Stores, edge_settings
from edgerig import CountingUpstream, eventually, raw_bytes
from prometheus_client import CollectorRegistry, Histogram

from gatekeeper.edge import metrics
from gatekeeper.edge.http.request import Request
from gatekeeper.edge.http.server import ClientConnection, Handler, HttpServer
from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.supervisor import Supervisor


async def test_stop_cuts_what_the_drain_left(
    edge_factory: EdgeFactory, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A request still waiting on its upstream at the drain deadline: its task is cancelled and
    awaited by stop(), its connection is cut, and one WARNING line counts it."""
    async with CountingUpstream(delay=4.0) as slow:
        edge = await edge_factory(upstream=slow.url, shutdown_drain_seconds=0.2)
        assert edge._server is not None
        server = edge._server
        call = asyncio.create_task(
            raw_bytes(
                edge.proxy_port,
                f"GET /api/{tenant}/slow HTTP/1.1\r\nHost: x\r\nX-Device-Id: d1\r\n\r\n".encode(),
            )
        )

        async def in_flight() -> bool:
            return slow.in_flight == 1

        assert await eventually(in_flight)
        (task,) = server.tasks
        caplog.set_level(logging.WARNING)
        started = time.monotonic()
        await edge.stop()
        assert task.cancelled()
        assert not server.tasks and not server.connections
        assert await call == b""  # cut: no answer rather than a late one
        assert time.monotonic() - started < 2.0  # the drain, then the hard phase at once
    cut = [r for r in caplog.records if r.name == "gatekeeper.edge.http.server"]
    assert [(r.levelno, r.getMessage()) for r in cut] == [
        (
            logging.WARNING,
            "http shutdown: 1 request(s) still in flight after the 0.2 s drain were cut "
            "(1 handler task(s) cancelled)",
        )
    ]
    gc.collect()  # a task destroyed while pending would be reported now
    assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]


async def test_an_edge_server_leaves_the_process_settings_alone(
    edge_factory: EdgeFactory,
) -> None:
    """GC tuning and the environment are the process's: the commands set them
    (``gatekeeper.runtime.gc_tuning``), not the library class a test or an embedder starts."""
    threshold, frozen, environ = gc.get_threshold(), gc.get_freeze_count(), dict(os.environ)
    edge = await edge_factory()
    await edge.stop()
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
    assert dict(os.environ) == environ


def test_a_hot_histogram_adds_what_observe_would() -> None:
    """``bulk_observer`` reaches into prometheus-client's Histogram: its bulk adds must expose
    exactly what one ``observe()`` per value would."""
    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", buckets=(0.1, 1.0), registry=registry)
    bulk = Histogram("bulk_seconds", "b", buckets=(0.1, 1.0), registry=registry)
    hot = metrics.HotHistogram(bulk)
    for value in (0.05, 0.1, 0.5, 3.0, 3.0):
        direct.observe(value)
        hot.observe(value)
    hot.flush()

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        (family,) = [f for f in registry.collect() if f.name == name]
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("bulk_seconds") == samples("direct_seconds")


async def test_a_supervisor_leaves_the_environment_alone(
    stores: Stores, echo_upstream: str
) -> None:
    """The supervisor names its workers' metrics directory to its /metrics view instead of
    writing ``PROMETHEUS_MULTIPROC_DIR`` into the process it shares with the command."""
    environ = dict(os.environ)
    supervisor = Supervisor(edge_settings(stores, echo_upstream, workers=2))
    await supervisor.start()
    try:
        assert dict(os.environ) == environ
        await supervisor.wait_ready()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{supervisor.metrics_port}/metrics") as response,
        ):
            assert response.status == 200
            assert "gatekeeper_ready" in await response.text()
    finally:
        await supervisor.stop()
    assert dict(os.environ) == environ


# --- a start against stores that are not there, and stops ---------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the probe is closed


def _sockets() -> set[str]:
    """This process's open sockets (by inode)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the directory's own fd is gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                found.add(target)
    return found


def _children() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                # The fields after the command (which may hold spaces): state, then the ppid.
                if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                    found.add(int(entry))
    return found


def _others() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


@contextlib.asynccontextmanager
async def _leaves_nothing() -> AsyncIterator[None]:
    """Asserts that the block leaves no task, socket or child process behind (a peer's end of
    a loopback connection may take a few loop turns to close)."""
    tasks, sockets, children = _others(), _sockets(), _children()
    yield

    async def clean() -> bool:
        return _others() <= tasks and _sockets() <= sockets and _children() <= children

    assert await eventually(clean, 2.0), (_others() - tasks, _sockets() - sockets)


async def test_a_start_with_postgres_unreachable_serves_and_stops_clean(
    stores: Stores, echo_upstream: str, tenant: str
) -> None:
    """No failure at the Postgres step: the pool opens empty (min_size=0), so the proxy serves
    while Postgres is down, its activity buffered. Its stop still leaves nothing behind."""
    async with _leaves_nothing():
        settings = edge_settings(stores, echo_upstream, shutdown_drain_seconds=0.5)
        edge = EdgeServer(
            settings.replace(database_url=f"postgresql://gk@127.0.0.1:{_closed_port()}/gk")
        )
        await edge.start()
        await edge.wait_ready()
        answer = await raw_bytes(
            edge.proxy_port,
            f"GET /api/{tenant}/x HTTP/1.1\r\nHost: x\r\nX-Device-Id: d1\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
        await edge.stop()
        await edge.stop()  # a no-op


async def test_a_start_with_redis_unreachable_is_unready_and_stops_clean(
    stores: Stores, echo_upstream: str
) -> None:
    """No failure at the Redis step either: the client connects lazily and the mirror retries
    in the background; the proxy is not ready (it fails closed) until the mirror loads."""
    async with _leaves_nothing():
        settings = edge_settings(stores, echo_upstream)
        edge = EdgeServer(settings.replace(redis_url=f"redis://127.0.0.1:{_closed_port()}/0"))
        await edge.start()
        await asyncio.sleep(0.3)  # the mirror has failed and is backing off
        assert not edge.readiness()["ready"] and edge.mirror.stale
        started = time.monotonic()
        await edge.stop()
        assert time.monotonic() - started < 1.0  # one cancellation ends the mirror
        await edge.stop()


async def test_a_start_that_fails_at_the_redis_step_leaves_nothing(
    stores: Stores, echo_upstream: str
) -> None:
    """What can fail there is the URL itself (redis-py checks it when the client is made)."""
    async with _leaves_nothing():
        settings = edge_settings(stores, echo_upstream)
        edge = EdgeServer(settings.replace(redis_url="redis://127.0.0.1:1/0?socket_timeout=x"))
        with pytest.raises(ValueError, match="socket_timeout"):
            await edge.start()
        await edge.stop()  # nothing to do
        await edge.stop()
        assert not edge.draining


async def test_stop_during_traffic_answers_every_request_in_flight(
    stores: Stores, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    n = 20
    async with CountingUpstream(delay=0.5) as slow, _leaves_nothing():
        edge = EdgeServer(edge_settings(stores, slow.url, shutdown_drain_seconds=5.0))
        await edge.start()
        await edge.wait_ready()
        head = "GET /api/{}/x HTTP/1.1\r\nHost: x\r\nX-Device-Id: t{}\r\n\r\n"
        calls = [
            asyncio.create_task(raw_bytes(edge.proxy_port, head.format(tenant, i).encode()))
            for i in range(n)
        ]

        async def all_in_flight() -> bool:
            return slow.in_flight == n

        assert await eventually(all_in_flight)
        caplog.set_level(logging.WARNING)
        await asyncio.gather(edge.stop(), edge.stop())  # the second finds nothing to do
        answers = await asyncio.gather(*calls)
        # Each answered in full, then its connection closed by the drain (raw_bytes reads to
        # the close): these clients asked to keep it alive.
        assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(b"upstream ok") for a in answers)
        await edge.stop()
    assert not [r for r in caplog.records if r.name.startswith("gatekeeper.edge.http")]


# --- HttpServer on its own ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _http_server(handler: Handler) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(handler)
    server.start()
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    try:
        yield server, listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        server.terminate()
        await listener.wait_closed()


async def _send(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    try:
        with contextlib.suppress(ConnectionError):
            return await asyncio.wait_for(reader.read(), 2.0)
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_cancelled_shutdown_still_terminates() -> None:
    """Cancelled during its drain, shutdown() cancels the handler tasks and cuts the
    connections before it gives in: nothing is left running or open."""

    async def never_answers() -> None:
        await asyncio.Event().wait()

    def handler(request: Request, conn: ClientConnection) -> None:
        conn.spawn(request, never_answers())

    async with _http_server(handler) as (server, port):
        client = await _send(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

        async def spawned() -> bool:
            return len(server.tasks) == 1

        assert await eventually(spawned)
        (task,) = server.tasks
        shutdown = asyncio.create_task(server.shutdown(30.0))
        await asyncio.sleep(0.1)
        shutdown.cancel()
        with pytest.raises(asyncio.CancelledError):
            await shutdown
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert await _closed_by_server(*client) == b""
        assert not server.connections


async def test_the_hard_phase_counts_requests_without_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request answered on callbacks (no task) and a head still arriving are cut and counted
    as requests; no task was cancelled."""
    answering: list[ClientConnection] = []

    def handler(request: Request, conn: ClientConnection) -> None:
        answering.append(conn)  # answers later, on a callback that never comes

    async with _http_server(handler) as (server, port):
        waiting = await _send(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        slow_head = await _send(port, b"GET / HTTP/1.1\r\nHost: x\r\n")

        async def both_in_flight() -> bool:
            return sum(c.requests_in_flight for c in server.connections) == 2

        assert await eventually(both_in_flight)
        caplog.set_level(logging.WARNING)
        await server.shutdown(0.1)
        assert await _closed_by_server(*waiting) == b""
        assert await _closed_by_server(*slow_head) == b""
    assert [r.getMessage() for r in caplog.records if r.name.startswith("gatekeeper")] == [
        "http shutdown: 2 request(s) still in flight after the 0.1 s drain were cut "
        "(0 handler task(s) cancelled)"
    ]


async def test_a_background_task_that_ends_fails_the_server(
    edge_factory: EdgeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A background task that ends while the server serves (here the gauges task, whose
    upstream read raises) sets ``failed`` at once, with the task named and the error's
    traceback: the worker process waits on it, stops, and exits 1 for its supervisor to start
    another (gatekeeper/runtime/worker.py). A normal stop sets nothing."""
    edge = await edge_factory()
    calm = await edge_factory()

    class BrokenPool:
        """Stands in for the pool the gauges read (the compiled pool's methods cannot be
        replaced; its own close() is already on the server's stop stack)."""

        def occupancy(self) -> tuple[int, int, int]:
            raise RuntimeError("a surprise")

    caplog.set_level(logging.ERROR)
    edge.upstream = BrokenPool()  # type: ignore[assignment]
    await asyncio.wait_for(edge.failed.wait(), 5.0)
    (line,) = [r for r in caplog.records if "ended while serving" in r.getMessage()]
    assert "gauges" in line.getMessage() and line.exc_info is not None
    await calm.stop()
    assert not calm.failed.is_set()
