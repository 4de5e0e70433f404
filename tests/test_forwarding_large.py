"""Large bodies through a real proxy process, watching its memory; and an upstream that drops
idle keep-alive connections."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from conftest import EdgeFactory, Stores
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
        edge = await edge_factory(upstream=f"http://127.0.0.1:{runner.addresses[0][1]}")
        base = f"http://127.0.0.1:{edge.proxy_port}"
        for method in ("GET", "DELETE", "GET"):
            async with session.request(method, f"{base}/api/{tenant}/idle") as response:
                assert response.status == 200
            await asyncio.sleep(0.2)
        assert server.requests == 3
    finally:
        await runner.cleanup()
