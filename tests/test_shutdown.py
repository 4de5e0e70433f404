"""Shutdown: one cancellation ends the blocklist mirror; the HTTP server's hard phase cuts what
the drain left; a failed start leaves nothing behind (docs/decisions.md, "Shutdown (issue 9)")."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time

import aiohttp
import pytest
from conftest import EdgeFactory, Stores, edge_settings
from edgerig import CountingUpstream, eventually, raw_bytes
from prometheus_client import CollectorRegistry, Histogram

from gatekeeper.edge import metrics
from gatekeeper.edge.blocklist import BlocklistMirror
from gatekeeper.runtime.supervisor import Supervisor
from gatekeeper.store.clients import open_redis


async def test_one_cancel_ends_the_mirror(stores: Stores) -> None:
    """PINGs back to back keep a Redis send in flight most of the time; cancelling after 0..11
    loop turns lands in every phase of it, including the one where Python 3.11's wait_for
    dropped the cancellation (two in three attempts hung before the fix)."""
    redis = open_redis(stores.redis_url)
    try:
        for turns in range(24):
            mirror = BlocklistMirror(redis, resync_seconds=60.0, ping_interval=0.0)
            task = asyncio.create_task(mirror.run())
            while not mirror.loaded:
                await asyncio.sleep(0.005)
            for _ in range(turns % 12):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            while not task.done():  # no task left behind, whatever the outcome
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            assert done, f"one cancellation did not end the mirror (after {turns % 12} turns)"
            assert task.cancelled()
    finally:
        await redis.aclose()


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
