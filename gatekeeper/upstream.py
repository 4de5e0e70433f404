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
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools

__all__ = ["UpstreamConnectError", "UpstreamError", "UpstreamPool", "UpstreamResponse",
           "UpstreamTimeout"]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


ResponseCallback = Callable[["UpstreamResponse | None", "Exception | None"], None]


class UpstreamError(Exception):
    """The upstream could not be used (connection refused, reset, malformed response)."""


class UpstreamConnectError(UpstreamError):
    """No connection could be opened; nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (connect or read) in time."""


class UpstreamResponse:
    """A response whose head has arrived; the body is read with :meth:`iter_body`."""

    __slots__ = ("_conn", "complete", "headers", "keep_alive", "reason", "status")

    def __init__(self, conn: _Connection, status: int, reason: bytes,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.complete = False
        self.keep_alive = False

    def body_if_complete(self) -> bytes | None:
        """The whole body if it has already arrived (the fast path for small responses)."""
        return self._conn.take_whole_body()

    async def iter_body(self) -> AsyncIterator[bytes]:
        async for chunk in self._conn.body_chunks():
            yield chunk

    def release(self) -> None:
        """Give the connection back (or close it if the exchange did not end cleanly)."""
        self._conn.finish()


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_done",
        "_body_size",
        "_callback",
        "_deadline",
        "_drain",
        "_head",
        "_head_request",
        "_headers",
        "_parser",
        "_paused",
        "_pool",
        "_read_timeout",
        "_reason",
        "_response",
        "_status",
        "_waiter",
        "closed",
        "reusable",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._status = 0
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._body_size = 0
        self._body_done = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        # When the upstream must have sent something by (loop time; 0: not waiting). The pool's
        # watchdog checks it: one sweep for all connections is cheaper than a timer per request.
        self._deadline = 0.0
        self._callback: ResponseCallback | None = None
        self._head_request = False
        self.reusable = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed response from upstream: {exc}"))
            self._close()
            return
        callback = self._callback
        if callback is not None and self._response is not None:
            # Callback mode (the proxy's fast path): answer once per read, when the head is in;
            # by then a small response is usually complete too.
            self._callback = None
            callback(self._response, None)

    def eof_received(self) -> bool | None:
        # A response delimited by the end of the connection ends here.
        if self._response is not None and not self._body_done and not self._response.complete:
            with_length = any(n.lower() in (b"content-length", b"transfer-encoding")
                              for n, _ in self._response.headers)
            if not with_length:
                self.on_message_complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if not self._body_done:
            self._fail(UpstreamError("upstream closed the connection"))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(UpstreamError("upstream closed the connection"))
        self._pool.forget(self)

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        self._status = self._parser.get_status_code()
        if self._status < 200:
            # 1xx interim responses (100 Continue, 103 Early Hints) are not forwarded; wait on.
            self._headers = []
            self._reason = b""
            return
        response = UpstreamResponse(self, self._status, self._reason, self._headers)
        self._response = response
        if self._head_request:
            # A response to HEAD has no body, but the parser cannot be told so: end the
            # message here and never reuse the connection (its parser state is unknown).
            self.reusable = False
            response.complete = True
            self._body_done = True
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._response is None:
            return
        self._response.complete = True
        self._response.keep_alive = self._parser.should_keep_alive()
        self._body_done = True
        self._wake()

    # internals
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        callback = self._callback
        if callback is not None:
            self._callback = None
            callback(None, exc)
            return
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def on_timeout(self) -> None:
        self._deadline = 0.0
        self._fail(UpstreamTimeout("upstream read timed out"))
        self._close()

    def _arm_timer(self) -> None:
        self._deadline = self._pool.now() + self._read_timeout

    def _cancel_timer(self) -> None:
        self._deadline = 0.0

    @property
    def overdue_at(self) -> float:
        return self._deadline

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _reset(self) -> None:
        self._headers = []
        self._reason = b""
        self._status = 0
        self._head = None
        self._response = None
        self._body.clear()
        self._body_size = 0
        self._body_done = False
        self._waiter = None
        self._callback = None
        self._head_request = False

    async def drain(self) -> None:
        if self._drain is not None:
            await self._drain

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def send_nowait(self, head: bytes, head_request: bool, callback: ResponseCallback) -> None:
        """Send a body-less request; ``callback`` gets the response (head in, body possibly
        complete) or the error, from within this protocol's callbacks."""
        self._head_request = head_request
        self._callback = callback
        self._arm_timer()
        self.write(head)

    def expect_response(self, head_request: bool) -> asyncio.Future[UpstreamResponse]:
        self._head_request = head_request
        self._head = asyncio.get_running_loop().create_future()
        self._arm_timer()
        return self._head

    def take_whole_body(self) -> bytes | None:
        if not self._body_done:
            return None
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body.clear()
        self._body_size = 0
        return body

    async def body_chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            while self._body:
                chunk = self._body.popleft()
                self._body_size -= len(chunk)
                if self._paused and self._body_size < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                yield chunk
            if self._body_done:
                return
            if self.closed:
                raise UpstreamError("upstream closed the connection mid-body")
            self._waiter = loop.create_future()
            self._arm_timer()
            try:
                await self._waiter
            finally:
                self._cancel_timer()
                self._waiter = None

    def finish(self) -> None:
        response = self._response
        reusable = (response is not None and response.complete and response.keep_alive
                    and self.reusable and not self.closed and not self._body)
        self._cancel_timer()
        self._reset()
        if reusable:
            self._pool.put_back(self)
        else:
            self._close()


class UpstreamPool:
    """Keep-alive connections to one ``host:port``, at most ``max_connections`` at once."""

    def __init__(self, host: str, port: int, *, max_connections: int, connect_timeout: float,
                 read_timeout: float) -> None:
        self.host = host
        self.port = port
        self.read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._max = max_connections
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closing = False

    def idle_connection(self) -> _Connection | None:
        """An idle keep-alive connection, without waiting (None if there is none)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _acquire(self) -> tuple[_Connection, bool]:
        """A connection, and whether it was reused (and so may have been closed meanwhile)."""
        while self._idle:
            conn = self._idle.pop()  # most recently used: the likeliest to be alive
            if not conn.closed:
                return conn, True
        if self._open < self._max:
            return await self._connect(), False
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
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

    async def _connect(self) -> _Connection:
        self._open += 1
        loop = asyncio.get_running_loop()
        if self._watchdog is None:
            self._watchdog = loop.create_task(self._watch())
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port)
        except TimeoutError as exc:
            self._open -= 1
            self._hand_over(None)
            raise UpstreamTimeout("upstream connect timed out") from exc
        except OSError as exc:
            self._open -= 1
            self._hand_over(None)
            raise UpstreamConnectError(f"cannot connect to upstream: {exc}") from exc
        self._all.add(protocol)
        return protocol

    def _hand_over(self, conn: _Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def put_back(self, conn: _Connection) -> None:
        if self._closing:
            conn._close()
            return
        if not self._hand_over(conn):
            self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection closed: free its slot for a waiter."""
        self._open -= 1
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        elif self._waiters:
            self._hand_over(None)

    async def send(self, head: bytes, body: AsyncIterator[bytes] | None, *,
                   head_request: bool = False) -> UpstreamResponse:
        """Send one request and wait for its response head.

        ``head`` is the encoded request line and headers; ``body`` yields the already-framed
        body bytes (raw for Content-Length, chunk-encoded otherwise). A request without a body
        whose reused connection turns out to be closed is retried once on a fresh one."""
        conn, reused = await self._acquire()
        try:
            return await self._exchange(conn, head, body, head_request)
        except UpstreamTimeout:
            raise
        except UpstreamError:
            # Only a body-less request on a reused connection that died before answering is
            # safe to send again: the upstream cannot have acted on it.
            if not (body is None and reused):
                raise
        conn = await self._connect()
        return await self._exchange(conn, head, None, head_request)

    async def _exchange(self, conn: _Connection, head: bytes, body: AsyncIterator[bytes] | None,
                        head_request: bool) -> UpstreamResponse:
        if conn.closed:
            raise UpstreamError("upstream connection closed")
        response_head = conn.expect_response(head_request)
        try:
            if body is None:
                conn.write(head)
            else:
                conn.write(head)
                async for chunk in body:
                    if response_head.done():
                        # The upstream answered early (e.g. 413): stop sending; the rest of
                        # the body is unsent, so the connection cannot be reused.
                        conn.reusable = False
                        break
                    conn.write(chunk)
                    await conn.drain()
            return await response_head
        except BaseException:
            conn.finish()
            raise

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for conn in self._idle:
            conn._close()
        self._idle.clear()
        self._hand_over(None)
