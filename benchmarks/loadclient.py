"""The built-in load generator: keep-alive HTTP/1.1 over raw asyncio (uvloop + httptools).

Two modes, both bounded by ``--duration`` and stopping by themselves:

* ``closed`` (the fallback for ``wrk``): ``--connections`` connections, each sending its next
  request as soon as the previous answer arrived; measures the maximum rate.
* ``paced`` (used for latency-at-half-load, with or without wrk): a fixed total rate spread over
  the connections, each on an absolute schedule (a late request does not shift the following
  ones), latency timed from the moment a request is written.

Every request carries the device headers of one of ``--devices`` ids, rotating. The result is one
JSON line on stdout. Run it as ``python -m benchmarks.loadclient --port P ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import cast

import httptools
import uvloop

__all__ = ["LoadResult", "device_id", "percentile", "request_bytes"]

DEVICE_HEADERS = (
    b"X-App-Name: bench-app\r\nX-App-Version: 1.0.0\r\nX-OS-Name: Linux\r\n"
    b"X-OS-Version: 6.1\r\nX-Device-Manufacturer: Bench\r\nX-Device-Model: B-1\r\n"
)


def device_id(index: int) -> str:
    """The id of device number ``index``; the harness blocks those with ``index % 100 == 0``."""
    return f"bench-{index:05d}"


def request_bytes(path: str, device: str | None) -> bytes:
    """One GET request as written on the wire."""
    dev = b"" if device is None else b"X-Device-Id: " + device.encode() + b"\r\n" + DEVICE_HEADERS
    return (
        b"GET "
        + path.encode()
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + dev
        + b"User-Agent: gatekeeper-bench\r\n\r\n"
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` percentile (0..100) of already sorted values, nearest rank."""
    if not sorted_values:
        return 0.0
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


@dataclass(slots=True)
class LoadResult:
    """What one load run measured; latencies in milliseconds."""

    requests: int = 0
    non2xx: int = 0
    errors: int = 0
    duration_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        lat = sorted(self.latencies_ms)
        return {
            "requests": self.requests,
            "non2xx": self.non2xx,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "rps": self.requests / self.duration_s if self.duration_s > 0 else 0.0,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
        }


class Connection(asyncio.Protocol):
    """A keep-alive client connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[int] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(exc)

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._parser.get_status_code())

    async def send(self, raw: bytes) -> int:
        """Write one request and return the status of its answer."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self._waiter


async def open_connection(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _transport, proto = await loop.create_connection(Connection, "127.0.0.1", port)
    return proto


async def _worker(
    port: int,
    requests: list[bytes],
    offset: int,
    start_at: float,
    stop_at: float,
    interval: float | None,
    result: LoadResult,
) -> None:
    """One connection's loop; reconnects after an error, gives up at ``stop_at``."""
    loop = asyncio.get_running_loop()
    conn: Connection | None = None
    n = len(requests)
    i = offset
    next_at = start_at
    while loop.time() < stop_at:
        if interval is not None:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at += interval
        try:
            if conn is None:
                conn = await open_connection(port)
            started = time.perf_counter()
            status = await conn.send(requests[i % n])
            result.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        except (OSError, httptools.HttpParserError):
            result.errors += 1
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            conn = None
            await asyncio.sleep(0.01)
            continue
        result.requests += 1
        if not 200 <= status < 300:
            result.non2xx += 1
        i += 1
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def run_load(
    port: int, path: str, connections: int, duration: float, devices: int, rate: float | None
) -> LoadResult:
    """Drive ``port`` for ``duration`` seconds; ``rate`` (requests/s in total) paces it."""
    requests = (
        [request_bytes(path, device_id(i)) for i in range(devices)]
        if devices
        else [request_bytes(path, None)]
    )
    result = LoadResult()
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop_at = started + duration
    interval = connections / rate if rate else None
    stride = max(1, len(requests) // connections)
    tasks = [
        asyncio.create_task(
            _worker(
                port,
                requests,
                c * stride,
                started + (interval or 0.0) * c / connections,
                stop_at,
                interval,
                result,
            )
        )
        for c in range(connections)
    ]
    # Workers stop at stop_at; the timeout only guards against a hung server.
    done, pending = await asyncio.wait(tasks, timeout=duration + 5.0)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            raise RuntimeError("a load connection failed") from task.exception()
    result.duration_s = loop.time() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/bench/items")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=None, help="paced mode: total requests/s")
    args = parser.parse_args()
    result = uvloop.run(
        run_load(args.port, args.path, args.connections, args.duration, args.devices, args.rate)
    )
    print(json.dumps(result.summary()), flush=True)


if __name__ == "__main__":
    main()
