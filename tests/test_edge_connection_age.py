"""A maximum age for client connections (``client_keepalive_time``, nginx's keepalive_time): a
keep-alive connection past it answers its next request with ``Connection: close`` and closes
after it, so long-lived clients spread over nodes added since they connected. Against the real
proxy, its echo upstream and the real stores, over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import pytest
from conftest import EdgeFactory

from gatekeeper.settings import Settings, SettingsError


class _KeepAliveClient:
    """One connection, one request at a time; each answer read by its Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, path: str) -> tuple[int, dict[str, str]]:
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: edge\r\nX-Device-Id: aged\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5.0)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split(" ")[1]), headers

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5.0) == b""


async def _open(port: int) -> _KeepAliveClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return _KeepAliveClient(reader, writer)


async def _requests_until_closed(client: _KeepAliveClient, path: str, limit: float) -> list[float]:
    """Send a request every 0.1 s until one is answered with Connection: close (then check the
    server closes); the times (since the first) of every answer, each a 200."""
    started, times = time.monotonic(), []
    while time.monotonic() - started < limit:
        status, headers = await client.get(path)
        assert status == 200, (status, headers)
        times.append(time.monotonic() - started)
        if headers.get("connection", "").lower() == "close":
            assert await client.closed_by_server()
            return times
        await asyncio.sleep(0.1)
    raise AssertionError(f"no Connection: close within {limit} s ({len(times)} answers)")


async def test_an_old_connection_is_closed_after_its_next_request(
    edge_factory: EdgeFactory, tenant: str
) -> None:
    edge = await edge_factory(client_keepalive_time=1.0)
    client = await _open(edge.proxy_port)
    try:
        times = await _requests_until_closed(client, f"/api/{tenant}/x", limit=5.0)
    finally:
        client.writer.close()
    # Never before the jitter's floor (90 % of the age), and within a sweep (1 s) of the age.
    assert len(times) > 5  # the connection served requests before it was retired
    assert 0.9 <= times[-1] <= 1.0 + 1.0 + 0.5, times
    # A new connection is served as any other.
    again = await _open(edge.proxy_port)
    try:
        status, headers = await again.get(f"/api/{tenant}/x")
        assert status == 200 and headers.get("connection", "").lower() != "close"
    finally:
        again.writer.close()


async def test_no_age_limit_when_the_setting_is_zero(
    edge_factory: EdgeFactory, tenant: str
) -> None:
    edge = await edge_factory(client_keepalive_time=0.0)
    client = await _open(edge.proxy_port)
    try:
        for _ in range(25):  # 2.5 s: past the 1 s limit of the test above, and two sweeps
            status, headers = await client.get(f"/api/{tenant}/x")
            assert status == 200 and headers.get("connection", "").lower() != "close"
            await asyncio.sleep(0.1)
    finally:
        client.writer.close()
        with contextlib.suppress(ConnectionError):
            await client.writer.wait_closed()


@pytest.mark.parametrize(
    "changes",
    [
        {"client_keepalive_time": -1.0},
        {"client_keepalive_time": math.nan},
        {"client_body_timeout": math.nan},
        {"upstream_read_timeout": math.inf},
    ],
)
def test_bad_ages_and_non_finite_numbers_are_refused(changes: dict[str, float]) -> None:
    ((name, _),) = changes.items()
    with pytest.raises(SettingsError, match=name):
        Settings(**changes)  # type: ignore[arg-type]
