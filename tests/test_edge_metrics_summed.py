"""The upstream and connection metrics of a node with two workers, summed on the supervisor's
/metrics as Prometheus scrapes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from conftest import Stores, edge_settings
from edgerig import eventually
from test_recorder_process import metrics_text, sample

from gatekeeper.runtime.supervisor import Supervisor

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def node(stores: Stores, echo_upstream: str) -> AsyncIterator[Supervisor]:
    running = Supervisor(edge_settings(stores, echo_upstream, workers=2, access_log="off"))
    await running.start()
    try:
        await running.wait_ready()
        yield running
    finally:
        await running.stop()


async def _held_connection(port: int, tenant: str) -> asyncio.StreamWriter:
    """A keep-alive client connection that has had one answer and stays open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/{tenant}/x HTTP/1.1\r\nHost: t\r\nX-Device-Id: held\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    return writer


async def test_responses_by_class_and_connections_are_summed_over_workers(
    node: Supervisor, tenant: str
) -> None:
    port = node.settings.proxy_port
    ok_responses = 'gatekeeper_upstream_responses_total{code_class="2xx"}'
    before = sample(await metrics_text(node.metrics_port), ok_responses)
    # A new connection per request: the kernel spreads them over both workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for i in range(40):
            async with http.get(
                f"http://127.0.0.1:{port}/api/{tenant}/x", headers={"X-Device-Id": f"d{i}"}
            ) as response:
                assert response.status == 200
                await response.read()
    held = [await _held_connection(port, tenant) for _ in range(6)]
    try:

        async def summed() -> bool:
            text = await metrics_text(node.metrics_port)
            responses = sample(text, ok_responses)
            return (
                responses - before == 46
                and sample(text, "gatekeeper_client_connections") == 6
                and sample(text, 'gatekeeper_upstream_connections{state="idle"}') >= 1
            )

        # Counters are summed at once; the gauges are refreshed every 0.5 s by each worker.
        assert await eventually(summed, 10.0, 0.1)
        text = await metrics_text(node.metrics_port)
        assert sample(text, 'gatekeeper_upstream_responses_total{code_class="5xx"}') == 0
        assert sample(text, "gatekeeper_upstream_pool_waiting") == 0
    finally:
        for writer in held:
            writer.close()
