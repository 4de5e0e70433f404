"""The rig for the edge tests: an upstream that counts what reaches it, proxy processes started
the way production starts them, raw HTTP over a socket, and bounded polling.

Everything here runs real servers on loopback; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.runtime.embedded import free_port

__all__ = [
    "CountingUpstream",
    "ProxyProcess",
    "RawResponse",
    "eventually",
    "metric_value",
    "raw_bytes",
    "raw_exchange",
]


class CountingUpstream:
    """An upstream that answers 200 and counts every request that reaches it, per device.

    ``delay`` makes every answer slow (for in-flight requests during a shutdown)."""

    def __init__(self, delay: float = 0.0, host: str = "127.0.0.1") -> None:
        self.delay = delay
        self.host = host
        self.requests = 0  # heads that arrived
        self.completed = 0  # requests whose body arrived whole
        self.in_flight = 0
        self.by_device: collections.Counter[str] = collections.Counter()
        self.last_headers: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.by_device[request.headers.get("X-Device-Id", "")] += 1
        self.last_headers = dict(request.headers)
        try:
            await request.read()
        except ConnectionError:
            return web.Response(status=400)  # the body never arrived whole
        self.completed += 1
        self.in_flight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return web.Response(text="upstream ok")

    async def __aenter__(self) -> CountingUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.url = f"http://{self.host}:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.01
) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes; True if it held."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def metric_value(
    session: aiohttp.ClientSession, port: int, sample: str, labels: dict[str, str] | None = None
) -> float | None:
    """One sample of the /metrics exposition on ``port``, or None if it is absent."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and (
                labels is None or all(s.labels.get(k) == v for k, v in labels.items())
            ):
                return float(s.value)
    return None


@dataclass
class RawResponse:
    status: int  # 0 when the server closed without answering
    headers: dict[str, str]
    body: bytes = field(repr=False)


async def raw_bytes(
    port: int, data: bytes, timeout: float = 5.0, *, quiet_after: float | None = None
) -> bytes:
    """Send ``data`` as is on a fresh connection; everything the server answers until it closes.
    With ``quiet_after``, stop waiting after that long instead of failing (a connection kept
    alive, or a head left unfinished on purpose)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = b""
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(*(() if quiet_after is None else (TimeoutError, ConnectionError))):
            async with asyncio.timeout(timeout if quiet_after is None else quiet_after):
                while chunk := await reader.read(65536):
                    raw += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return raw


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> RawResponse:
    """Send ``data`` as is on a fresh connection and read the answer until the server closes
    (send ``Connection: close``; the server closes after a parse error anyway)."""
    raw = await raw_bytes(port, data, timeout)
    if not raw:
        return RawResponse(0, {}, b"")  # closed without an answer
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


class ProxyProcess:
    """``python -m gatekeeper proxy`` in a child process, as production runs it.

    Settings not given as flags come from ``GATEKEEPER_*`` variables in ``env``. The child's
    output goes to a log file in ``log_dir`` (shown when a test fails to start it). ``host`` is
    the address both ports listen on; ``launcher`` goes before the command (``ip netns exec
    NAME`` runs the node in a network namespace: it execs, so signals reach the proxy itself)."""

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        upstream: str,
        log_dir: Path,
        workers: int = 1,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        launcher: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.proxy_port = free_port()
        self.metrics_port = free_port()
        self._args = [
            *launcher,
            sys.executable,
            "-m",
            "gatekeeper",
            "proxy",
            "--workers",
            str(workers),
            "--proxy-port",
            str(self.proxy_port),
            "--metrics-port",
            str(self.metrics_port),
            "--upstream",
            upstream,
            "--database-url",
            database_url,
            "--redis-url",
            redis_url,
            "--log-level",
            "WARNING",
            "--host",
            host,
        ]
        self._env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GATEKEEPER_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        self._env.update(
            {
                "GATEKEEPER_SHUTDOWN_DRAIN_SECONDS": "5",
                "GATEKEEPER_FLUSH_INTERVAL_SECONDS": "0.05",
                **(env or {}),
            }
        )
        self.log = log_dir / f"proxy-{self.proxy_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.proxy_port}"

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self._args, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(
                    f"http://{self.host}:{self.metrics_port}/readyz"
                ) as response:
                    return response.status == 200
            return False

        assert await eventually(ready, timeout, 0.05), f"proxy not ready:\n{self.tail()}"

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if the process still runs after ``timeout``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.proc.poll()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time. Safe to call twice."""
        if self.proc is None:
            return
        self.terminate()
        if await self.wait_exit(15.0) is None:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"
