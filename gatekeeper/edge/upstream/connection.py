"""One keep-alive connection to the upstream: an asyncio protocol that writes a request and parses
the response with httptools (llhttp), handing the body over chunk by chunk with back-pressure.
The pool that owns these connections is :mod:`gatekeeper.edge.upstream.pool`."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast

import httptools

from gatekeeper.edge.http.flow import FlowControl

__all__ = [
    "ConnectionOwner",
    "ResponseCallback",
    "UpstreamConnectError",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

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

    def __init__(
        self,
        conn: UpstreamConnection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.complete = False
        self.keep_alive = False

    def body_if_complete(self) -> bytes | None:
        """The whole body if it has already arrived (the fast path for small responses)."""
        return self._conn.take_whole_body()

    def iter_body(self) -> AsyncIterator[bytes]:
        return self._conn.body_chunks()

    def release(self) -> None:
        """Give the connection back (or close it if the exchange did not end cleanly)."""
        self._conn.finish()


class ConnectionOwner(Protocol):
    """What a connection needs of the pool that owns it (gatekeeper.edge.upstream.pool)."""

    @property
    def read_timeout(self) -> float: ...

    def now(self) -> float: ...

    def put_back(self, conn: UpstreamConnection) -> None: ...

    def forget(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_done",
        "_body_size",
        "_callback",
        "_deadline",
        "_flow",
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
        "idle_since",
        "reusable",
        "transport",
    )

    def __init__(self, pool: ConnectionOwner) -> None:
        self._pool = pool
        self._read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0  # when the pool last put it back (monotonic)
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
        self._flow = FlowControl()
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
            self.close()
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
            with_length = any(
                n.lower() in (b"content-length", b"transfer-encoding")
                for n, _ in self._response.headers
            )
            if not with_length:
                self.on_message_complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if not self._body_done:
            self._fail(UpstreamError("upstream closed the connection"))
        self._flow.connection_lost(UpstreamError("upstream closed the connection"))
        self._pool.forget(self)

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

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
        # Given up before the transport reports the close: a pending drain learns why (the
        # caller answers 504), not merely that the connection closed.
        self._flow.connection_lost(UpstreamTimeout("upstream stopped reading the request body"))
        self.close()

    def _arm_timer(self) -> None:
        self._deadline = self._pool.now() + self._read_timeout

    def _cancel_timer(self) -> None:
        self._deadline = 0.0

    @property
    def overdue_at(self) -> float:
        return self._deadline

    def close(self) -> None:
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

    def expect_response(
        self, head_request: bool, *, armed: bool = True
    ) -> asyncio.Future[UpstreamResponse]:
        """The future of the response head; its read timeout starts now if ``armed``, else
        at :meth:`arm_read_timeout` (once a request body has been sent)."""
        self._head_request = head_request
        self._head = asyncio.get_running_loop().create_future()
        if armed:
            self._arm_timer()
        return self._head

    def arm_read_timeout(self) -> None:
        if self._response is None:
            self._arm_timer()

    async def drain_within_timeout(self) -> None:
        """Wait for room to write, for at most the read timeout."""
        if self._flow.writing_paused:
            # Armed only while waiting: time between writes is the client's (its body pace).
            self._arm_timer()
            try:
                await self._flow.drain()
            finally:
                if self._response is None:
                    self._cancel_timer()

    def take_whole_body(self) -> bytes | None:
        if not self._body_done:
            return None
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body.clear()
        self._body_size = 0
        return body

    def body_chunks(self) -> AsyncIterator[bytes]:
        return _BodyChunks(self)

    def finish(self) -> None:
        response = self._response
        reusable = (
            response is not None
            and response.complete
            and response.keep_alive
            and self.reusable
            and not self.closed
            and not self._body
        )
        self._cancel_timer()
        self._reset()
        if reusable:
            self._pool.put_back(self)
        else:
            self.close()


class _BodyChunks:
    """The response body chunk by chunk, with back-pressure (an iterator class: mypyc compiles
    no async generator)."""

    def __init__(self, conn: UpstreamConnection) -> None:
        self._conn = conn

    def __aiter__(self) -> _BodyChunks:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while True:
            if conn._body:
                chunk = conn._body.popleft()
                conn._body_size -= len(chunk)
                if conn._paused and conn._body_size < _LOW_WATER and conn.transport is not None:
                    conn._paused = False
                    conn.transport.resume_reading()
                return chunk
            if conn._body_done:
                raise StopAsyncIteration
            if conn.closed:
                raise UpstreamError("upstream closed the connection mid-body")
            conn._waiter = asyncio.get_running_loop().create_future()
            conn._arm_timer()
            try:
                await conn._waiter
            finally:
                conn._cancel_timer()
                conn._waiter = None
