"""A lean HTTP/1.1 client for the one upstream: pooled keep-alive connections on asyncio
protocols, responses parsed by httptools (llhttp, the parser Node.js uses).

Why not aiohttp's ``ClientSession``: it costs ~100 µs per request, more than the whole budget of
a proxied request. This client does only what a reverse proxy needs: write a request head and a
streamed body, parse a response head, hand the body over chunk by chunk with back-pressure, and
put the connection back when the response is complete and keep-alive.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import AsyncIterator

from gatekeeper.edge.upstream.connection import (
    UpstreamConnectError,
    UpstreamConnection,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from gatekeeper.edge.upstream.tls import UpstreamTls

__all__ = [
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
]

_log = logging.getLogger(__name__)


class UpstreamPool:
    """Keep-alive connections to one ``host:port``, at most ``max_connections`` at once; over
    TLS when ``tls`` is given (an ``https://`` upstream), every connection with its context."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float = 60.0,
        tls: UpstreamTls | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        # The Host header's value: the port only when it is not the scheme's default, an IPv6
        # address in brackets (RFC 9110 §7.2, RFC 3986 §3.2.2).
        name = f"[{host}]" if ":" in host else host
        self.authority = name if port == (443 if tls is not None else 80) else f"{name}:{port}"
        self._ssl: ssl.SSLContext | None = tls.context if tls is not None else None
        self._server_name: str | None = tls.server_name if tls is not None else None
        # An idle keep-alive connection unused this long is closed (nginx's upstream
        # keepalive_timeout, 60 s): a concurrency peak's connections are not held for good.
        self._idle_timeout = idle_timeout
        self.port = port
        self.read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._max = max_connections
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[UpstreamConnection | None]] = (
            collections.deque()
        )
        self._closing = False

    def idle_connection(self) -> UpstreamConnection | None:
        """An idle keep-alive connection, without waiting (None if there is none)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _acquire(self) -> tuple[UpstreamConnection, bool]:
        """A connection, and whether it was reused (and so may have been closed meanwhile)."""
        while self._idle:
            conn = self._idle.pop()  # most recently used: the likeliest to be alive
            if not conn.closed:
                return conn, True
        if self._open < self._max:
            return await self._connect(), False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        self._waiters.append(waiter)
        handed = await waiter
        return (handed, True) if handed is not None else (await self._connect(), False)

    now = staticmethod(time.monotonic)

    async def _watch(self) -> None:
        """Time out connections whose upstream went quiet (granularity: a tenth of the timeout,
        at most 250 ms)."""
        period = min(0.25, self.read_timeout / 10)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in [c for c in self._all if 0.0 < c.overdue_at <= now]:
                conn.on_timeout()
            self._close_stale_idle(now)

    def _close_stale_idle(self, now: float) -> None:
        # The idle list is a stack (most recently used last): the stale ones are at its bottom.
        idle = self._idle
        stale = 0
        while stale < len(idle) and now - idle[stale].idle_since > self._idle_timeout:
            stale += 1
        if stale:
            for conn in idle[:stale]:
                conn.close()
            del idle[:stale]

    async def _connect(self) -> UpstreamConnection:
        self._open += 1
        loop = asyncio.get_running_loop()
        if self._watchdog is None:
            self._watchdog = loop.create_task(self._watch())
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self._server_name,
                )
        except TimeoutError as timeout:  # not "exc" again: mypyc gives both clauses one type
            self._open -= 1
            self._hand_over(None)
            raise UpstreamTimeout("upstream connect timed out") from timeout
        except OSError as exc:
            self._open -= 1
            self._hand_over(None)
            if isinstance(exc, ssl.SSLError) and self.tls is not None:
                self.tls.handshake_failed(exc, self.host, self.port)
            raise UpstreamConnectError(f"cannot connect to upstream: {exc}") from exc
        self._all.add(protocol)
        return protocol

    def _hand_over(self, conn: UpstreamConnection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def put_back(self, conn: UpstreamConnection) -> None:
        if self._closing:
            conn.close()
            return
        if not self._hand_over(conn):
            conn.idle_since = time.monotonic()
            self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: free its slot for a waiter."""
        self._open -= 1
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        elif self._waiters:
            self._hand_over(None)

    async def send(
        self,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        *,
        head_request: bool = False,
        retryable: bool = False,
    ) -> UpstreamResponse:
        """Send one request and wait for its response head.

        ``head`` is the encoded request line and headers; ``body`` yields the already-framed
        body bytes (raw for Content-Length, chunk-encoded otherwise). A ``retryable`` request
        (idempotent, without a body) whose reused connection fails before answering is sent
        once more on a fresh connection, as nginx's ``proxy_next_upstream error`` does."""
        conn, reused = await self._acquire()
        try:
            return await self._exchange(conn, head, body, head_request)
        except UpstreamTimeout:
            raise
        except UpstreamError:
            # A kept-alive connection the upstream closed while idle is the usual cause; the
            # request may have reached it, so only idempotent ones go again.
            if not (retryable and body is None and reused):
                raise
        conn = await self._connect()
        return await self._exchange(conn, head, None, head_request)

    async def _exchange(
        self,
        conn: UpstreamConnection,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        head_request: bool,
    ) -> UpstreamResponse:
        if conn.closed:
            raise UpstreamError("upstream connection closed")
        # The read timeout runs only while the upstream owes the proxy something: an answer
        # once the request is sent, or room to write while the body is sent. Time spent waiting
        # for a slow client's body is the client's (its own timeout, answered with 408).
        response_head = conn.expect_response(head_request, armed=body is None)
        try:
            conn.write(head)
            if body is not None:
                async for chunk in body:
                    if response_head.done():
                        # The upstream answered early (e.g. 413): stop sending; the rest of
                        # the body is unsent, so the connection cannot be reused.
                        conn.reusable = False
                        break
                    conn.write(chunk)
                    await conn.drain_within_timeout()
                conn.arm_read_timeout()
            return await response_head
        except BaseException:
            if response_head.done() and not response_head.cancelled():
                response_head.exception()  # seen: the error raised here is the one that counts
            conn.finish()
            raise

    async def close(self, grace: float = 0.0) -> None:
        """Close every connection: idle ones at once, busy ones when their exchange ends (they
        are not put back) or, at the latest, after ``grace`` seconds, logging how many were cut.

        Busy connections are cut rather than left to the event loop's end: their sockets would
        stay open (and their handlers wait) past the process's own shutdown."""
        self._closing = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._hand_over(None)
        deadline = time.monotonic() + grace
        # The watchdog keeps running meanwhile: an upstream gone quiet is timed out as usual.
        while self._busy() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        busy = self._busy()
        if busy:
            _log.warning(
                "upstream: %d busy connection(s) cut at shutdown after %.1f s", len(busy), grace
            )
            for conn in busy:
                conn.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            # asyncio.wait, not `await` under suppress(CancelledError): that would also swallow
            # a cancellation of close() itself.
            await asyncio.wait([self._watchdog])
            self._watchdog = None

    def _busy(self) -> list[UpstreamConnection]:
        return [conn for conn in self._all if not conn.closed]

    def occupancy(self) -> tuple[int, int, int]:
        """For the pool gauges: connections in use (connecting included), idle, and requests
        waiting for one."""
        idle = len(self._idle)
        return self._open - idle, idle, len(self._waiters)
