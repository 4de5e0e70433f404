"""One client connection of the proxy's HTTP server: parsing (httptools), pipelining in order,
limits, body back-pressure, answers written back, and an upgraded connection handed over as a raw
byte stream. Timeouts, age and shutdown are its owner's: :mod:`gatekeeper.edge.http.server`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

import httptools

from gatekeeper.edge.http.disconnect import ClientDisconnected
from gatekeeper.edge.http.flow import FlowControl
from gatekeeper.edge.http.request import BadRequestBody, Request, RequestBody, simple_response
from gatekeeper.problem import problem_body

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "ClientConnection",
    "ClientDisconnected",
    "ConnectionOwner",
    "Handler",
]

_NONE_REPEATED: frozenset[bytes] = frozenset()
DISCARD_LIMIT = 64 * 1024  # an unread body this small is read and dropped, the connection kept

_log = logging.getLogger(__name__)

MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024  # request line + headers, as nginx's large_client_header_buffers

Handler = Callable[["Request", "ClientConnection"], None]
"""Starts answering a request; must end, now or later, with ``conn.request_done(request)``
(directly, or by handing the rest to ``conn.spawn``)."""


class ConnectionOwner(Protocol):
    """What a connection needs of its server (:class:`~gatekeeper.edge.http.server.HttpServer`):
    a Protocol, so this module does not import the server that imports it."""

    handler: Handler
    connections: set[ClientConnection]
    tasks: set[asyncio.Task[None]]
    draining: bool
    date_header: bytes
    body_idle_seconds: float

    def on_rejected(self) -> None: ...


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for each in order."""

    __slots__ = (
        "_broken",
        "_busy",
        "_flow",
        "_handler",
        "_head_bytes",
        "_headers",
        "_lookup",
        "_parser",
        "_parsing",
        "_paused",
        "_queue",
        "_repeated",
        "_server",
        "_tunnel",
        "_underscored",
        "_upgrade_buffer",
        "_url",
        "age_draw",
        "busy_since",
        "bytes_sent",
        "client_ip",
        "closed",
        "idle_since",
        "opened_at",
        "retiring",
        "transport",
    )

    def __init__(self, server: ConnectionOwner) -> None:
        self._server = server
        self._handler = server.handler
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.closed = False
        self.bytes_sent = 0  # for the access log's bytes out (a request's share: see _start)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._lookup: dict[bytes, bytes] = {}
        self._repeated: set[bytes] | frozenset[bytes] = _NONE_REPEATED
        self._underscored: list[bytes] | tuple[()] = ()
        self._head_bytes = 0
        self._parsing: Request | None = None
        self._queue: collections.deque[Request] = collections.deque()
        self._busy = False  # a request is being answered (by a callback chain or a task)
        self._broken = False  # the byte stream broke HTTP framing: read no further
        self._paused = False
        self._flow = FlowControl()
        self._tunnel: Callable[[bytes | None], None] | None = None
        # Bytes past an upgrade request's head, held until the handler decides (None: no upgrade).
        self._upgrade_buffer: bytes | None = None
        self.idle_since = self.opened_at = time.monotonic()
        self.busy_since = 0.0  # when the current request head began (0: none in progress)
        self.retiring = False  # past its maximum age (the server's sweep): last request next
        self.age_draw = random.random()  # where its age limit falls in the server's jitter

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        if self._tunnel is not None:
            self._tunnel(None)
        if self._parsing is not None and self._parsing.body is not None:
            self._parsing.body._wake()
        self._flow.connection_lost(ClientDisconnected)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel(data)
            return
        if self._upgrade_buffer is not None:
            self._upgrade_buffer += data
            return
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._upgrade_leftover(data[offset:])
        except httptools.HttpParserError as exc:
            # httptools wraps exceptions raised in callbacks; ours says the head is too large.
            cause = exc.__context__
            body = self._parsing.body if self._parsing is not None else None
            if self._busy and body is not None and not body._done:
                # The head was handed over and its body turned out malformed: the handler is
                # still the one to answer (400), then the connection closes.
                self._broken = True
                self._pause_reading()
                body._fail(BadRequestBody(f"malformed request body: {exc}"))
            elif isinstance(cause, _HeadTooLarge):
                self._reject(431, "Request header fields too large", str(cause))
            else:
                self._reject(400, "Bad request", f"Malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._lookup = {}
        # Shared empties: most requests repeat no header and have no "_" in a name, so the
        # containers are made only when one is needed.
        self._repeated = _NONE_REPEATED
        self._underscored = ()
        self._head_bytes = 0
        self.busy_since = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEADER_BYTES:
            raise _HeadTooLarge("the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEADER_BYTES:
            raise _HeadTooLarge(f"request headers exceed {MAX_HEADER_BYTES} bytes")
        if len(self._headers) >= MAX_HEADERS:
            raise _HeadTooLarge(f"more than {MAX_HEADERS} request headers")
        self._headers.append((name, value))
        lname = name.lower()
        if 95 in name:  # b"_": an int look-up is a memchr; a bytes one costs ~10x (measured)
            self._underscored = [*self._underscored, lname]
        if lname in self._lookup:
            # Which copy would the upstream believe? Let the handler refuse where it matters.
            self._repeated = self._repeated | {lname}
        self._lookup[lname] = value

    def on_headers_complete(self) -> None:
        if self.closed:
            return
        parser = self._parser
        request = Request(
            parser.get_method().decode("ascii", "replace"),
            self._url.decode("latin-1"),
            parser.get_http_version(),
            self._headers,
            self._lookup,
            parser.should_keep_alive() and not (self._server.draining or self.retiring),
            parser.should_upgrade(),
            self._repeated,
            self._underscored,
        )
        if request.chunked or (request.content_length or 0) > 0:
            request.body = RequestBody(self, self._server.body_idle_seconds)
        self._parsing = request
        self.busy_since = 0.0
        if not self._busy:
            self._start(request)
        else:
            # Pipelined: answer in order. Stop reading until the queue is worked off.
            self._queue.append(request)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None and request.body is not None:
            request.body._feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None and request.body is not None:
            request.body._finish()

    # --- running handlers -------------------------------------------------------------------
    def _start(self, request: Request) -> None:
        self._busy = True
        request.sent_mark = self.bytes_sent
        try:
            self._handler(request, self)
        except Exception:
            _log.exception("unhandled error in the proxy handler")
            self.close()
            self.request_done(request)

    def spawn(self, request: Request, work: Coroutine[Any, Any, None]) -> None:
        """Finish ``request`` in a task (for handlers that must wait); ends with request_done."""
        task = asyncio.get_running_loop().create_task(self._finish_in_task(request, work))
        self._server.tasks.add(task)
        task.add_done_callback(self._server.tasks.discard)

    async def _finish_in_task(self, request: Request, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except ClientDisconnected:
            pass  # the client left mid-answer: nobody to answer, and no fault of the handler
        except Exception:
            _log.exception("unhandled error in the proxy handler")
            self.close()
        self.request_done(request)

    def request_done(self, request: Request) -> None:
        """The handler has answered ``request``: go on with the connection's next request."""
        if not self._busy:
            return
        self._busy = False
        if self.closed or self._tunnel is not None:
            return
        body = request.body
        if not request.keep_alive or (body is not None and not self._discard_rest(request)):
            # Answered with Connection: close, or too much of its body was left unread to wait.
            self.close()
            return
        self.idle_since = time.monotonic()
        if request.upgrade:
            self._resume_http()
            return
        if self._queue:
            self._start(self._queue.popleft())
            if not self._queue:
                self._resume_reading()
        elif self._server.draining:
            self.close()

    def _discard_rest(self, request: Request) -> bool:
        """An answered request whose body was not (all) read, e.g. a denied POST: read and drop
        the rest when it is small and its length known, as nginx does, so the connection stays
        usable; llhttp still frames it, so the next request starts exactly where it should.
        False when the connection must close instead."""
        body = request.body
        assert body is not None
        if body.complete:
            return True
        length = request.content_length
        if not body._done and (length is None or length - body.received > DISCARD_LIMIT):
            return False  # chunked of unknown size, or too much left to wait for
        if b"expect" in request.lookup and body.received == 0 and not body._done:
            # Refused before any 100 Continue: the client may never send the body, and its next
            # request would be read as that body. Close, as RFC 9110 §10.1.1 allows.
            return False
        body.discard()
        self._resume_reading()
        return True

    # --- writing ----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.bytes_sent += len(data)
            self.transport.write(data)

    def drain(self) -> Coroutine[Any, Any, None]:
        """Await after a write: returns once the client has taken enough of the buffer, raises
        :class:`ClientDisconnected` if it went away meanwhile."""
        return self._flow.drain()  # not a coroutine of its own: one allocation per drain, not two

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection now, dropping what is not sent yet: for a shutdown past its
        deadline, where :meth:`close` would wait for a slow client to take the buffer."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def requests_in_flight(self) -> int:
        """Requests begun and not answered: one being answered, those queued behind it, and a
        head still arriving."""
        return self._busy + len(self._queue) + (self.busy_since > 0.0)

    @property
    def date_header(self) -> bytes:
        return self._server.date_header

    # --- flow control and errors ------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed and not self._queue:
            self._paused = False
            self.transport.resume_reading()

    def _reject(self, status: int, title: str, detail: str) -> None:
        self._server.on_rejected()
        if not self._busy:
            body = problem_body(status, title, detail)
            self.write(
                simple_response(
                    status,
                    title,
                    body,
                    b"application/problem+json",
                    close=True,
                    date=self._server.date_header,
                )
            )
        self.close()

    # --- upgrades ---------------------------------------------------------------------------
    def take_over(self, sink: Callable[[bytes | None], None]) -> bytes:
        """Route every further byte from the client to ``sink`` (None when the client closes);
        returns what had already arrived past the upgrade request's head. Call only once the
        upstream has switched protocols (101): until then the bytes are HTTP."""
        self._tunnel = sink
        leftover, self._upgrade_buffer = self._upgrade_buffer or b"", None
        self._resume_reading()
        return leftover

    def _upgrade_leftover(self, data: bytes) -> None:
        # llhttp stops at an upgrade request's head. What follows is the new protocol only if
        # the upstream agrees (101); hold it, and read no more, until the handler has decided.
        self._upgrade_buffer = data
        self._pause_reading()

    def _resume_http(self) -> None:
        """An upgrade that did not happen (refused, denied, or not a WebSocket): what the client
        sent after it is HTTP again, parsed and checked like any other request (a fresh parser,
        since llhttp stays in its upgraded state)."""
        held, self._upgrade_buffer = self._upgrade_buffer or b"", None
        self._parser = httptools.HttpRequestParser(self)
        self._parsing = None
        self._resume_reading()
        if held:
            self.data_received(held)
        elif self._server.draining:
            self.close()


class _HeadTooLarge(Exception):
    pass
