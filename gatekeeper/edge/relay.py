"""Forwarding an admitted request: its head and body to the upstream, the answer back, and
WebSocket upgrades (a tunnel only after the upstream's ``101``: gatekeeper.edge.upstream.tunnel).

Responses are written as bytes: the upstream's status line and headers pass through without
being decoded. What goes wrong with the upstream is answered here (502, 504) and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from gatekeeper.edge.answers import (
    COUNT_FORWARDED,
    COUNT_INVALID,
    COUNT_SHADOW_BLOCKED,
    COUNT_UPSTREAM_ERROR,
    COUNT_UPSTREAM_TIMEOUT,
    UPSTREAM_CODE_CLASSES,
    UPSTREAM_DURATION,
    body_too_large,
    problem,
)
from gatekeeper.edge.forward import RequestHeadBuilder, RequestIds, response_head
from gatekeeper.edge.http.request import BadRequestBody, ClientBodyTimeout, Request
from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.edge.upstream.pool import (
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from gatekeeper.edge.upstream.tunnel import Refused, open_websocket, splice
from gatekeeper.logs import Throttled
from gatekeeper.settings import Settings

__all__ = ["IDEMPOTENT", "Relay"]

_log = logging.getLogger(__name__)

_NO_BODY_STATUSES = frozenset({204, 304})
# RFC 9110 §9.2.2: safe to send twice (what nginx retries by default).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _BodyTooLarge(Exception):
    pass


class _FramedBody:
    """A request body as sent upstream: raw, or chunk-encoded when it came chunked; raises
    :class:`_BodyTooLarge` past the limit (an iterator class: mypyc compiles no async
    generator)."""

    def __init__(self, chunks: AsyncIterator[bytes], limit: int, chunked: bool) -> None:
        self._chunks = chunks
        self._left = limit
        self._chunked = chunked
        self._ended = False

    def __aiter__(self) -> _FramedBody:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            if not self._chunked:
                raise
            return b"0\r\n\r\n"
        self._left -= len(chunk)
        if self._left < 0:
            raise _BodyTooLarge
        return b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk


class Relay:
    """The upstream side of one proxy worker's requests (built once per worker)."""

    def __init__(self, settings: Settings, upstream: UpstreamPool) -> None:
        self._upstream = upstream
        self._max_body = settings.max_body_bytes
        self._connect_timeout = settings.upstream_connect_timeout
        self._read_timeout = settings.upstream_read_timeout
        self._upstream_name = upstream.authority
        # An unreachable upstream fails every request: say so once, then at most every 10 s.
        self._failures = Throttled(_log)
        self._heads = RequestHeadBuilder(
            upstream.authority, trust_forwarded=settings.trust_forwarded_headers
        )
        # X-Forwarded-Proto: every connection of a TLS listener came in over https.
        self._scheme = b"https" if settings.tls_cert_file else b"http"
        self.request_ids = RequestIds()

    def head(
        self, request: Request, conn: ClientConnection, req_id: bytes, upgrade: bool = False
    ) -> bytes:
        lookup = request.lookup
        has_body = request.body is not None
        return self._heads.build(
            request.method,
            request.target,
            request.headers,
            lookup.get(b"connection"),
            client_ip=conn.client_ip,
            scheme=self._scheme,
            host=lookup.get(b"host"),
            req_id=req_id,
            content_length=request.content_length if has_body else None,
            chunked=has_body and request.chunked,
            upgrade=upgrade,
            drop=request.underscored,
        )

    def _request_body(self, request: Request) -> AsyncIterator[bytes]:
        assert request.body is not None
        return _FramedBody(request.body.chunks(), self._max_body, request.chunked)

    async def forward(self, request: Request, conn: ClientConnection, req_id: bytes) -> None:
        request.request_id = req_id
        head = self.head(request, conn, req_id)
        body = None
        if request.body is not None:
            body = self._request_body(request)
            if b"expect" in request.lookup and request.body.received == 0:
                # Admitted: now the client may send the body it has been holding back.
                conn.write(_CONTINUE)
        sent = time.perf_counter()
        try:
            upstream = await self._upstream.send(
                head,
                body,
                head_request=request.method == "HEAD",
                retryable=request.method in IDEMPOTENT,
            )
        except _BodyTooLarge:
            body_too_large(conn, request, self._max_body)
            return
        except BadRequestBody as exc:
            COUNT_INVALID.hit(request)
            problem(conn, request, 400, "Bad request", str(exc), close=True)
            return
        except ClientBodyTimeout:
            COUNT_INVALID.hit(request)
            problem(
                conn,
                request,
                408,
                "Request timeout",
                "The request body stopped arriving.",
                close=True,
            )
            return
        except UpstreamError as failure:  # not "exc" again: mypyc gives both clauses one type
            self.failed(request, conn, failure)
            return
        if self.respond(request, conn, upstream, req_id, sent):
            await self.stream(request, conn, upstream, req_id)

    def failed(self, request: Request, conn: ClientConnection, error: Exception | None) -> None:
        if isinstance(error, UpstreamTimeout):
            COUNT_UPSTREAM_TIMEOUT.hit(request)
            self._failures.warning(
                "timeout",
                "upstream %s timed out (%s); answering 504",
                self._upstream_name,
                error,
            )
            problem(
                conn, request, 504, "Upstream timed out", "The upstream did not answer in time."
            )
        else:
            COUNT_UPSTREAM_ERROR.hit(request)
            self._failures.warning(
                "error",
                "upstream %s failed (%s); answering 502",
                self._upstream_name,
                error or "connection closed",
            )
            problem(conn, request, 502, "Bad gateway", "The upstream could not be reached.")

    def _answered(self, request: Request, status: int, sent: float) -> None:
        """Counts a response head from the upstream, and notes it for the access log."""
        seconds = time.perf_counter() - sent
        UPSTREAM_DURATION.observe(seconds)
        if request.outcome:  # set before forwarding only by a shadow block (handler._admit)
            COUNT_SHADOW_BLOCKED.hit(request)
        else:
            COUNT_FORWARDED.hit(request)
        request.upstream_seconds = seconds
        request.upstream_status = request.status = status
        code_class = status // 100 - 1
        if 0 <= code_class < 5:
            UPSTREAM_CODE_CLASSES[code_class].count += 1

    def respond(
        self,
        request: Request,
        conn: ClientConnection,
        upstream: UpstreamResponse,
        req_id: bytes,
        sent: float,
    ) -> bool:
        """Answer from a response whose head is in; True if its body must still be streamed."""
        status = upstream.status
        self._answered(request, status, sent)
        if request.method == "HEAD" or status in _NO_BODY_STATUSES:
            # No body, whatever the upstream's Content-Length says: pass that header through.
            upstream.release()
            conn.write(
                response_head(
                    status,
                    upstream.reason,
                    upstream.headers,
                    req_id,
                    framing=_length_header(upstream.headers),
                    keep_alive=request.keep_alive,
                )
            )
            return False
        whole = upstream.body_if_complete()
        if whole is not None:
            upstream.release()
            conn.write(
                response_head(
                    status,
                    upstream.reason,
                    upstream.headers,
                    req_id,
                    framing=b"Content-Length: %d\r\n" % len(whole),
                    keep_alive=request.keep_alive,
                )
                + whole
            )
            return False
        return True

    async def stream(
        self, request: Request, conn: ClientConnection, upstream: UpstreamResponse, req_id: bytes
    ) -> None:
        length = _length_header(upstream.headers)
        chunked = not length and request.version == "1.1"
        if not length and not chunked:
            request.keep_alive = False  # an HTTP/1.0 client: the end of the body is the close
        framing = length or (b"Transfer-Encoding: chunked\r\n" if chunked else b"")
        conn.write(
            response_head(
                upstream.status,
                upstream.reason,
                upstream.headers,
                req_id,
                framing=framing,
                keep_alive=request.keep_alive,
            )
        )
        try:
            async for chunk in upstream.iter_body():
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
            if chunked:
                conn.write(b"0\r\n\r\n")
        except UpstreamError as exc:
            # The head is already sent: the only honest signal left is to cut the connection.
            _log.debug("streaming aborted: %r", exc)
            conn.close()
        finally:
            upstream.release()

    async def upgrade(self, request: Request, conn: ClientConnection) -> None:
        req_id = request.request_id = self.request_ids(request.lookup.get(b"x-request-id"))
        if not _is_websocket(request):
            # Only WebSocket is proxied as an upgrade; anything else (h2c, ...) is an ordinary
            # request, its Upgrade header dropped as hop-by-hop, as nginx does.
            await self.forward(request, conn, req_id)
            return
        head = self.head(request, conn, req_id, upgrade=True)
        sent = time.perf_counter()
        try:
            answer = await open_websocket(
                self._upstream.host,
                self._upstream.port,
                head,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                tls=self._upstream.tls,
            )
        except UpstreamError as exc:
            self.failed(request, conn, exc)
            return
        self._answered(request, answer.status if isinstance(answer, Refused) else 101, sent)
        if isinstance(answer, Refused):
            conn.write(
                response_head(
                    answer.status,
                    answer.reason,
                    answer.headers,
                    req_id,
                    framing=b"Content-Length: %d\r\n" % len(answer.body),
                    keep_alive=request.keep_alive,
                )
                + answer.body
            )
            return
        await splice(conn, answer)


def _is_websocket(request: Request) -> bool:
    upgrade = request.lookup.get(b"upgrade", b"")
    return (
        request.method == "GET"
        and request.body is None
        and b"websocket" in (t.strip().lower() for t in upgrade.split(b","))
    )


def _length_header(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name.lower() == b"content-length":
            return b"Content-Length: " + value + b"\r\n"
    return b""
