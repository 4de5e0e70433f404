"""The proxy's per-request path: identify, deny or admit, record, forward.

Everything a request needs is built once per worker in :class:`EdgeHandler`; a request does no
I/O but the upstream exchange (and, in enforce mode, one Redis read the first time a key is seen).
Responses are written as bytes: the upstream's status line and headers pass through without being
decoded, and denials are pre-encoded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from gatekeeper.domain.edgeview import KeyGrant
from gatekeeper.domain.identity import Identity, IdentityError, IdentityReader
from gatekeeper.edge.activity.recorder import ActivityRecorder
from gatekeeper.edge.admission import AdmissionError, HeadAdmission
from gatekeeper.edge.answers import (
    BLOCKED_RESPONSES,
    COUNT_BLOCKED,
    COUNT_DISABLED,
    COUNT_FORWARDED,
    COUNT_INVALID,
    COUNT_TOO_LARGE,
    COUNT_UNAUTHORIZED,
    COUNT_UNAVAILABLE,
    COUNT_UPSTREAM_ERROR,
    COUNT_UPSTREAM_TIMEOUT,
    DENIAL_STATUS_LINE,
    DISABLED_RESPONSES,
    REQUEST_DURATION,
    UPSTREAM_DURATION,
    problem,
)
from gatekeeper.edge.blocklist import BLOCKED, BlocklistMirror
from gatekeeper.edge.forward import EDGE_HEADERS, RequestHeadBuilder, RequestIds, response_head
from gatekeeper.edge.http.request import BadRequestBody, ClientBodyTimeout, Request
from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.edge.keycache import KeyCache
from gatekeeper.edge.upstream.pool import (
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from gatekeeper.edge.upstream.tunnel import Refused, open_websocket, splice
from gatekeeper.settings import Settings

__all__ = ["EdgeHandler"]

_log = logging.getLogger(__name__)

_BEARER = b"bearer "
_NO_BODY_STATUSES = frozenset({204, 304})
_CREDENTIAL_HEADERS = frozenset({b"x-api-key", b"authorization"})
# RFC 9110 §9.2.2: safe to send twice (what nginx retries by default).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _BodyTooLarge(Exception):
    pass


class EdgeHandler:
    """The request handler of one proxy worker (for
    :class:`gatekeeper.edge.http.server.HttpServer`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        mirror: BlocklistMirror,
        recorder: ActivityRecorder,
        upstream: UpstreamPool,
        keys: KeyCache | None,
    ) -> None:
        self._identity = IdentityReader(settings)
        self._admission = HeadAdmission(
            self._identity.header_keys | _CREDENTIAL_HEADERS | EDGE_HEADERS,
            drop_aliases=settings.underscore_headers == "drop",
        )
        self._mirror = mirror
        self._recorder = recorder
        self._upstream = upstream
        self._keys = keys
        self._fail_open = settings.fail_open
        self._max_body = settings.max_body_bytes
        self._connect_timeout = settings.upstream_connect_timeout
        self._read_timeout = settings.upstream_read_timeout
        host = upstream.host if upstream.port == 80 else f"{upstream.host}:{upstream.port}"
        self._heads = RequestHeadBuilder(host, trust_forwarded=settings.trust_forwarded_headers)
        self._request_ids = RequestIds()

    def __call__(self, request: Request, conn: ClientConnection) -> None:
        """Answer ``request``. The common case (a body-less request, an idle upstream connection)
        runs on protocol callbacks alone; anything that must wait continues in a task."""
        started = time.perf_counter()
        identity = self._identify(request, conn)
        if identity is None:
            self._done(request, conn, started)
            return
        if self._keys is not None:
            # Enforce mode: the key is checked before anything else is said about the device.
            conn.spawn(request, self._enforced(request, conn, identity, started))
            return
        if not self._admit(request, conn, identity):
            self._done(request, conn, started)
            return
        upstream = None
        if request.body is None and not request.upgrade:
            upstream = self._upstream.idle_connection()
        if upstream is None:
            conn.spawn(request, self._proceed(request, conn, started))
            return
        req_id = self._request_ids(request.lookup.get(b"x-request-id"))
        sent = time.perf_counter()

        def answered(response: UpstreamResponse | None, error: Exception | None) -> None:
            try:
                if response is None:
                    if isinstance(error, UpstreamTimeout) or request.method not in _IDEMPOTENT:
                        self._upstream_failed(request, conn, error)
                    else:
                        # A kept-alive connection that died before answering (most often closed
                        # by the upstream while idle): an idempotent request goes again, on
                        # another connection, in the task path.
                        conn.spawn(request, self._proceed(request, conn, started, req_id))
                        return
                elif self._respond(request, conn, response, req_id, sent):
                    conn.spawn(request, self._stream_response(request, conn, response, req_id))
                    return
            except Exception:
                _log.exception("unexpected error answering a request")
                conn.close()
            self._done(request, conn, started)

        upstream.send_nowait(self._head(request, conn, req_id), request.method == "HEAD", answered)

    def _done(self, request: Request, conn: ClientConnection, started: float) -> None:
        REQUEST_DURATION.observe(time.perf_counter() - started)
        conn.request_done(request)

    async def _enforced(
        self, request: Request, conn: ClientConnection, identity: Identity, started: float
    ) -> None:
        try:
            grant = await self._authorized(request, conn, identity)
            if grant is None:
                return
            if identity.device_id is None and grant.device_id is not None:
                # A device key without X-Device-Id: the key says which device is calling, so
                # its block applies (and its activity is recorded).
                identity = Identity(identity.tenant_id, grant.device_id, identity.attributes)
            if self._admit(request, conn, identity):
                await self._proceed(request, conn, started=None)
        finally:
            REQUEST_DURATION.observe(time.perf_counter() - started)

    async def _proceed(
        self,
        request: Request,
        conn: ClientConnection,
        started: float | None,
        req_id: bytes | None = None,
    ) -> None:
        """Forward (or upgrade) an admitted request, in a task; with ``started``, it also
        observes the request's duration (the enforce path observes its own)."""
        try:
            if request.upgrade:
                await self._upgrade(request, conn)
                return
            await self._forward(
                request, conn, req_id or self._request_ids(request.lookup.get(b"x-request-id"))
            )
        except (ConnectionError, OSError):
            conn.close()  # the client went away; nothing to answer
        finally:
            if started is not None:
                REQUEST_DURATION.observe(time.perf_counter() - started)

    def _identify(self, request: Request, conn: ClientConnection) -> Identity | None:
        """Who is calling, or None after answering 4xx (a head the edge cannot take as it is, a
        bad identity) or 503 (no mirror yet)."""
        try:
            path = self._admission(request)
            identity = self._identity.read(path, request.lookup, request.repeated)
        except AdmissionError as exc:
            COUNT_INVALID.inc()
            extra = (
                b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
                if exc.status == 405
                else b""
            )
            problem(conn, request, exc.status, exc.title, exc.detail, extra, close=True)
            return None
        except IdentityError as exc:
            COUNT_INVALID.inc()
            problem(conn, request, 400, "Invalid device identification", exc.detail)
            return None
        if not self._mirror.loaded and not self._fail_open:
            COUNT_UNAVAILABLE.inc()
            problem(
                conn,
                request,
                503,
                "Service unavailable",
                "The blocklist is not loaded yet.",
                b"Retry-After: 1\r\n",
            )
            return None
        return identity

    def _admit(self, request: Request, conn: ClientConnection, identity: Identity) -> bool:
        """Activity, denial and size checks; answers and returns False to refuse."""
        device_id = identity.device_id
        if device_id is not None:
            key = (identity.tenant_id, device_id)
            # Denied requests are recorded too: "last active" shows a blocked device still calling.
            self._recorder.record(key, identity.attributes, request.method == "POST")
            denial = self._mirror.denial(key)
            if denial is not None:
                if denial == BLOCKED:
                    COUNT_BLOCKED.inc()
                    rest = BLOCKED_RESPONSES[request.keep_alive]
                else:
                    COUNT_DISABLED.inc()
                    rest = DISABLED_RESPONSES[request.keep_alive]
                conn.write(DENIAL_STATUS_LINE + conn.date_header + rest)
                return False
        length = request.content_length
        if length is not None and length > self._max_body:
            COUNT_TOO_LARGE.inc()
            problem(
                conn,
                request,
                413,
                "Request body too large",
                f"The body limit is {self._max_body} bytes.",
                close=True,
            )
            return False
        return True

    async def _authorized(
        self, request: Request, conn: ClientConnection, identity: Identity
    ) -> KeyGrant | None:
        """The grant of the presented key, or None after answering 401 (or 503)."""
        assert self._keys is not None
        if request.repeated and not request.repeated.isdisjoint(_CREDENTIAL_HEADERS):
            COUNT_UNAUTHORIZED.inc()
            problem(
                conn,
                request,
                401,
                "Unauthorized",
                "Send one credential, once.",
                b"WWW-Authenticate: Bearer\r\n",
            )
            return None
        secret = request.lookup.get(b"x-api-key")
        if secret is None:
            auth = request.lookup.get(b"authorization", b"")
            if auth[:7].lower() == _BEARER:
                secret = auth[7:].strip()
        if not secret:
            COUNT_UNAUTHORIZED.inc()
            problem(
                conn,
                request,
                401,
                "Unauthorized",
                "An API key or personal access token is required.",
                b"WWW-Authenticate: Bearer\r\n",
            )
            return None
        digest = self._keys.digest(secret.decode("latin-1"))
        try:
            grant = await self._keys.grant(digest)
        except (RedisError, OSError):
            COUNT_UNAVAILABLE.inc()
            problem(
                conn,
                request,
                503,
                "Service unavailable",
                "Keys cannot be checked right now.",
                b"Retry-After: 1\r\n",
            )
            return None
        device_id = identity.device_id
        if (
            grant is None
            or grant.tenant_id != identity.tenant_id
            or (
                grant.device_id is not None
                and device_id is not None
                and grant.device_id != device_id
            )
        ):
            COUNT_UNAUTHORIZED.inc()
            problem(
                conn,
                request,
                401,
                "Unauthorized",
                "The key is not valid for this request.",
                b"WWW-Authenticate: Bearer\r\n",
            )
            return None
        self._recorder.note_key_use(digest)
        return grant

    def _head(
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
            scheme=b"http",
            host=lookup.get(b"host"),
            req_id=req_id,
            content_length=request.content_length if has_body else None,
            chunked=has_body and request.chunked,
            upgrade=upgrade,
            drop=request.underscored,
        )

    async def _request_body(self, request: Request) -> AsyncIterator[bytes]:
        assert request.body is not None
        total = 0
        limit = self._max_body
        chunked = request.chunked
        async for chunk in request.body.chunks():
            total += len(chunk)
            if total > limit:
                raise _BodyTooLarge
            yield b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
        if chunked:
            yield b"0\r\n\r\n"

    async def _forward(self, request: Request, conn: ClientConnection, req_id: bytes) -> None:
        head = self._head(request, conn, req_id)
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
                retryable=request.method in _IDEMPOTENT,
            )
        except _BodyTooLarge:
            COUNT_TOO_LARGE.inc()
            problem(
                conn,
                request,
                413,
                "Request body too large",
                f"The body limit is {self._max_body} bytes.",
                close=True,
            )
            return
        except BadRequestBody as exc:
            COUNT_INVALID.inc()
            problem(conn, request, 400, "Bad request", str(exc), close=True)
            return
        except ClientBodyTimeout:
            COUNT_INVALID.inc()
            problem(
                conn,
                request,
                408,
                "Request timeout",
                "The request body stopped arriving.",
                close=True,
            )
            return
        except UpstreamError as exc:
            self._upstream_failed(request, conn, exc)
            return
        if self._respond(request, conn, upstream, req_id, sent):
            await self._stream_response(request, conn, upstream, req_id)

    def _upstream_failed(
        self, request: Request, conn: ClientConnection, error: Exception | None
    ) -> None:
        if isinstance(error, UpstreamTimeout):
            COUNT_UPSTREAM_TIMEOUT.inc()
            problem(
                conn, request, 504, "Upstream timed out", "The upstream did not answer in time."
            )
        else:
            COUNT_UPSTREAM_ERROR.inc()
            _log.debug("upstream error: %s", error)
            problem(conn, request, 502, "Bad gateway", "The upstream could not be reached.")

    def _respond(
        self,
        request: Request,
        conn: ClientConnection,
        upstream: UpstreamResponse,
        req_id: bytes,
        sent: float,
    ) -> bool:
        """Answer from a response whose head is in; True if its body must still be streamed."""
        UPSTREAM_DURATION.observe(time.perf_counter() - sent)
        COUNT_FORWARDED.inc()
        status = upstream.status
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

    async def _stream_response(
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

    async def _upgrade(self, request: Request, conn: ClientConnection) -> None:
        req_id = self._request_ids(request.lookup.get(b"x-request-id"))
        if not _is_websocket(request):
            # Only WebSocket is proxied as an upgrade; anything else (h2c, ...) is an ordinary
            # request, its Upgrade header dropped as hop-by-hop, as nginx does.
            await self._forward(request, conn, req_id)
            return
        head = self._head(request, conn, req_id, upgrade=True)
        sent = time.perf_counter()
        try:
            answer = await open_websocket(
                self._upstream.host,
                self._upstream.port,
                head,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
            )
        except UpstreamError as exc:
            self._upstream_failed(request, conn, exc)
            return
        UPSTREAM_DURATION.observe(time.perf_counter() - sent)
        COUNT_FORWARDED.inc()
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
