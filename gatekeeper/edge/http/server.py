"""The proxy's listening side: a small HTTP/1.1 server on asyncio protocols, parsed by httptools.

Why not aiohttp's server here: per request it builds a request object, a case-insensitive header
multidict, a response object and a writer, which cost more than the rest of a proxied request.
The proxy needs less: the raw request line and headers as bytes, a body stream with
back-pressure, and a way to write bytes back. Parsing is llhttp's (via httptools); each
connection (:mod:`gatekeeper.edge.http.connection`) frames itself: keep-alive, pipelining
(answered in order), limits, and handing an upgraded connection (WebSocket) over as a raw byte
stream. This module owns them all: the shared Date header, timeouts, draining and shutdown.

The admin API and the ops endpoints keep using aiohttp's full server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from email.utils import formatdate

from gatekeeper.edge.http.connection import ClientConnection, ClientDisconnected, Handler

__all__ = ["ClientConnection", "ClientDisconnected", "Handler", "HttpServer"]

_log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 75.0  # nginx's keepalive_timeout
# A connection's age at which its next request is answered with Connection: close (nginx's
# keepalive_time). Each connection draws its own limit up to 10 % below, so the clients of a
# node that restarted do not all reconnect in the same second an hour later.
MAX_CONNECTION_SECONDS = 3600.0
AGE_JITTER = 0.1
HEADER_SECONDS = 30.0  # time allowed to send a whole request head (slowloris guard)
BODY_IDLE_SECONDS = 60.0  # longest pause between two pieces of a request body (nginx's default)
# How long the hard phase waits for cancelled handler tasks. They end at their next await; the
# deadline is for one that does not (Python 3.11's wait_for can drop a cancellation).
CANCEL_GRACE_SECONDS = 1.0


class HttpServer:
    """Owns the listening socket's connections: their handler, the shared Date header, the
    timeout sweep, and draining."""

    def __init__(
        self,
        handler: Handler,
        *,
        on_rejected: Callable[[], None] = lambda: None,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        header_seconds: float = HEADER_SECONDS,
        body_idle_seconds: float = BODY_IDLE_SECONDS,
        max_connection_seconds: float = MAX_CONNECTION_SECONDS,
    ) -> None:
        self.handler = handler
        self.on_rejected = on_rejected
        self.connections: set[ClientConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # handlers that had to wait
        self.draining = False
        self.date_header = b""
        self._keepalive = keepalive_seconds
        self._header_timeout = header_seconds
        self.body_idle_seconds = body_idle_seconds
        self._max_age = max_connection_seconds  # 0: no limit
        self._sweeper: asyncio.Task[None] | None = None
        self._refresh_date()

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def _refresh_date(self) -> None:
        self.date_header = b"Date: %s\r\n" % formatdate(usegmt=True).encode()

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._refresh_date()
            now = time.monotonic()
            for conn in list(self.connections):
                if self._max_age and not conn.retiring:
                    # Checked here, once a second, not per request: a limit in hours needs no
                    # finer grain, and the request path reads one flag.
                    age_limit = self._max_age * (1.0 - AGE_JITTER * conn.age_draw)
                    conn.retiring = now - conn.opened_at > age_limit
                if conn._busy:
                    continue
                if conn.busy_since and now - conn.busy_since > self._header_timeout:
                    conn._reject(408, "Request timeout", "The request head took too long.")
                elif not conn.busy_since and now - conn.idle_since > self._keepalive:
                    conn.close()

    async def shutdown(self, timeout: float) -> None:
        """Drain, then cut. Call once the listener has stopped accepting (a connection accepted
        during the drain would only be cut at its deadline).

        Graceful phase, up to ``timeout`` seconds: idle connections close now, busy ones finish
        their request and close after it (draining turns keep-alive off). Hard phase, for what
        is left at the deadline: :meth:`terminate`, then wait for the cancelled handler tasks,
        with one WARNING line counting what was cut. Cancelled itself, it still terminates: a
        shutdown never leaves sockets open or tasks running."""
        self.draining = True
        try:
            await self._drain(time.monotonic() + timeout)
        except BaseException:
            self.terminate()
            raise
        requests = sum(conn.requests_in_flight for conn in self.connections)
        tasks = self.terminate()
        if requests or tasks:
            _log.warning(
                "http shutdown: %d request(s) still in flight after the %.1f s drain were cut "
                "(%d handler task(s) cancelled)",
                requests,
                timeout,
                len(tasks),
            )
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        await _wait_cancelled(tasks)

    async def _drain(self, deadline: float) -> None:
        while True:
            for conn in list(self.connections):
                if not conn.requests_in_flight:
                    conn.close()
            if (not self.connections and not self.tasks) or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.02)

    def terminate(self) -> list[asyncio.Task[None]]:
        """Stop at once: cancel the handler tasks and the sweep, cut every connection. Returns
        the handler tasks it cancelled, for the caller to await (``shutdown`` does)."""
        self.draining = True
        # Tasks are cancelled before their connections are cut: a cancelled handler stops at
        # its next await, instead of first running on against a closed connection.
        tasks = [task for task in self.tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        # abort(), not close(): what was not sent yet would go to a client whose answer is cut.
        for conn in list(self.connections):
            conn.abort()
        return tasks


async def _wait_cancelled(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for cancelled tasks to end, cancelling again one that lost its cancellation."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(2):
        if not pending:
            return
        _, pending = await asyncio.wait(pending, timeout=CANCEL_GRACE_SECONDS / 2)
        for task in pending:
            task.cancel()
    if pending:
        _log.error(
            "http shutdown: %d task(s) ignored cancellation and are abandoned: %s",
            len(pending),
            ", ".join(t.get_name() for t in pending),
        )
