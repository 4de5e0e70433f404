"""One request as the proxy's HTTP server hands it over: the head (raw bytes, a look-up table) and
a body stream with back-pressure; and the fixed responses the server writes itself."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

__all__ = ["BadRequestBody", "ClientBodyTimeout", "Request", "RequestBody", "simple_response"]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


def simple_response(
    status: int,
    reason: str,
    body: bytes,
    content_type: bytes,
    extra: bytes = b"",
    *,
    close: bool = False,
    date: bytes = b"",
) -> bytes:
    """A complete response with a fixed body (denials, errors)."""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()),
            date,
            b"Server: gatekeeper\r\nContent-Type: ",
            content_type,
            b"\r\nContent-Length: %d\r\n" % len(body),
            extra,
            b"Connection: close\r\n" if close else b"",
            b"\r\n",
            body,
        )
    )


class BadRequestBody(Exception):
    """The request body broke HTTP framing after its head was accepted (answer 400)."""


class BodySource(Protocol):
    """What a body stream needs of its connection (the server's ClientConnection): stop and
    restart reading for back-pressure, and whether the client has gone."""

    @property
    def closed(self) -> bool: ...

    def _pause_reading(self) -> None: ...

    def _resume_reading(self) -> None: ...


class ClientBodyTimeout(Exception):
    """The client sent no body bytes for the body timeout (answer 408, as nginx's
    ``client_body_timeout``): a slow upload is fine, a stalled one is not."""


class RequestBody:
    """A request body as it arrives, with back-pressure on the client connection."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_discarding",
        "_done",
        "_error",
        "_idle_timeout",
        "_size",
        "_waiter",
        "received",
    )

    def __init__(self, conn: BodySource, idle_timeout: float) -> None:
        self._conn = conn
        self._idle_timeout = idle_timeout
        self._discarding = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._done = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BadRequestBody | None = None
        self.received = 0

    def _feed(self, chunk: bytes) -> None:
        if self._discarding:
            self.received += len(chunk)
            return
        self._chunks.append(chunk)
        self._size += len(chunk)
        self.received += len(chunk)
        if self._size > _HIGH_WATER:
            self._conn._pause_reading()
        self._wake()

    def discard(self) -> None:
        """Nobody will read this body: drop what arrived and what is still to come (the
        connection reads on, so the next request's head is found where the client put it)."""
        self._discarding = True
        self._chunks.clear()
        self._size = 0

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: BadRequestBody) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def complete(self) -> bool:
        return self._done and not self._chunks

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self)

    @staticmethod
    def _stalled(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ClientBodyTimeout("the client stopped sending its body"))


class _Chunks:
    """A body's chunks as they arrive (an iterator class: mypyc compiles no async generator)."""

    def __init__(self, body: RequestBody) -> None:
        self._body = body

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        body = self._body
        while True:
            if body._chunks:
                chunk = body._chunks.popleft()
                body._size -= len(chunk)
                if body._size < _LOW_WATER:
                    body._conn._resume_reading()
                return chunk
            if body._error is not None:
                raise body._error
            if body._done:
                raise StopAsyncIteration
            if body._conn.closed:
                raise ConnectionResetError("client went away mid-body")
            loop = asyncio.get_running_loop()
            body._waiter = waiter = loop.create_future()
            timer = loop.call_later(body._idle_timeout, body._stalled, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                body._waiter = None


class Request:
    """One request head. ``headers`` keeps the raw pairs in order; ``lookup`` maps a lower-case
    name to its last value. ``target`` is what the edge checks and forwards: the raw target until
    the handler has normalised it (gatekeeper.edge.admission)."""

    __slots__ = (
        "body",
        "chunked",
        "content_length",
        "device",
        "headers",
        "keep_alive",
        "lookup",
        "method",
        "outcome",
        "raw_path",
        "repeated",
        "request_id",
        "sent_mark",
        "status",
        "target",
        "tenant",
        "underscored",
        "upgrade",
        "upstream_seconds",
        "upstream_status",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        version: str,
        headers: list[tuple[bytes, bytes]],
        lookup: dict[bytes, bytes],
        keep_alive: bool,
        upgrade: bool,
        repeated: AbstractSet[bytes] = frozenset(),
        underscored: Sequence[bytes] = (),
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.target = raw_path
        self.version = version
        self.headers = headers
        self.lookup = lookup
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.body: RequestBody | None = None
        self.repeated = repeated  # lower-case names sent more than once
        self.underscored = underscored  # lower-case names containing "_"
        length = lookup.get(b"content-length")
        self.content_length = int(length) if length is not None else None
        self.chunked = b"transfer-encoding" in lookup
        # What the access log says of the request, filled in as it is answered.
        self.outcome = ""  # a gatekeeper_requests_total outcome; "" if it was never answered
        self.status = 0  # of the response sent to the client
        self.upstream_status = 0
        self.upstream_seconds = -1.0  # request sent upstream to response head (-1: not sent)
        self.request_id = b""  # the X-Request-Id sent upstream
        self.sent_mark = 0  # the connection's bytes sent when this request began
        self.tenant = ""
        self.device = ""
