"""The proxy's per-request path: identify, deny or admit, record, forward.

Everything a request needs is built once per worker in :class:`EdgeHandler`; a request does no
I/O but the upstream exchange (and, in enforce mode, one Redis read the first time a key is seen).
This module decides; the upstream exchange is gatekeeper.edge.relay's, the key check
gatekeeper.edge.enforce's, and what the edge answers itself gatekeeper.edge.answers'.
"""

from __future__ import annotations

import logging
import time

from gatekeeper.domain.identity import Identity, IdentityError, IdentityReader
from gatekeeper.edge.accesslog import AccessLog
from gatekeeper.edge.activity.recorder import ActivityRecorder
from gatekeeper.edge.admission import AdmissionError, HeadAdmission
from gatekeeper.edge.answers import (
    BLOCKED_RESPONSES,
    COUNT_BLOCKED,
    COUNT_DISABLED,
    COUNT_INVALID,
    DENIAL_STATUS_LINE,
    DISABLED_RESPONSES,
    REQUEST_DURATION,
    body_too_large,
    problem,
    rate_limited,
    unavailable,
)
from gatekeeper.edge.blocklist import BLOCKED, SHADOW, BlocklistMirror
from gatekeeper.edge.enforce import CREDENTIAL_HEADERS, KeyCheck
from gatekeeper.edge.forward import EDGE_HEADERS
from gatekeeper.edge.http.request import Request
from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.edge.keycache import KeyCache
from gatekeeper.edge.ratelimit import DeviceRateLimiter, retry_after
from gatekeeper.edge.relay import IDEMPOTENT, Relay
from gatekeeper.edge.upstream.pool import UpstreamPool, UpstreamResponse, UpstreamTimeout
from gatekeeper.edge.upstream.tunnel import OpenTunnels
from gatekeeper.settings import Settings

__all__ = ["EdgeHandler"]

_log = logging.getLogger(__name__)


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
        access_log: AccessLog | None = None,
        limiter: DeviceRateLimiter | None = None,
    ) -> None:
        self._identity = IdentityReader(settings)
        self._admission = HeadAdmission(
            self._identity.header_keys | CREDENTIAL_HEADERS | EDGE_HEADERS,
            drop_aliases=settings.underscore_headers == "drop",
        )
        self._mirror = mirror
        self._recorder = recorder
        self._upstream = upstream
        self._keys = None if keys is None else KeyCheck(keys, recorder)
        self._fail_open = settings.fail_open
        self._limiter = limiter  # None when the rate limit is off: one test per request
        self._max_body = settings.max_body_bytes
        relay = Relay(settings, upstream)
        # Bound once: the fast path calls these on every request.
        self._request_ids = relay.request_ids
        self._head = relay.head
        self._respond = relay.respond
        self._stream_response = relay.stream
        self._upstream_failed = relay.failed
        self._forward = relay.forward
        self._upgrade = relay.upgrade
        self._tunnels = OpenTunnels(mirror.refuses)  # a shadow block leaves tunnels open
        mirror.watch(self._tunnels.enforce)
        self._access_log = access_log
        self._log_every_request = settings.access_log == "all"
        self._sample = settings.access_log_sample
        self._until_sampled = 1  # the first success is logged: the log shows traffic flows

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
            conn.spawn(request, self._proceed(request, conn, started, device=identity))
            return
        req_id = request.request_id = self._request_ids(request.lookup.get(b"x-request-id"))
        sent = time.perf_counter()

        def answered(response: UpstreamResponse | None, error: Exception | None) -> None:
            try:
                if response is None:
                    if isinstance(error, UpstreamTimeout) or request.method not in IDEMPOTENT:
                        self._upstream_failed(request, conn, error)
                    else:
                        # A kept-alive connection that died before answering (most often closed
                        # by the upstream while idle): an idempotent request goes again, on
                        # another connection, in the task path.
                        conn.spawn(request, self._proceed(request, conn, started, req_id))
                        return
                elif self._respond(request, conn, response, req_id, sent):
                    conn.spawn(request, self._streamed(request, conn, response, req_id, started))
                    return
            except Exception:
                _log.exception("unexpected error answering a request")
                conn.close()
            self._done(request, conn, started)

        upstream.send_nowait(self._head(request, conn, req_id), request.method == "HEAD", answered)

    def _done(self, request: Request, conn: ClientConnection, started: float) -> None:
        self._finished(request, conn, started)
        conn.request_done(request)

    def _finished(self, request: Request, conn: ClientConnection, started: float) -> None:
        """Observes a request's duration and, when it is one to log, writes its access line."""
        seconds = time.perf_counter() - started
        REQUEST_DURATION.observe(seconds)
        access_log = self._access_log
        if access_log is None:
            return
        if not self._log_every_request and request.outcome == "forwarded" and request.status < 500:
            # A success: one in access_log_sample is logged (errors and denials always are).
            self._until_sampled -= 1
            if self._until_sampled > 0:
                return
            self._until_sampled = self._sample
        access_log.write(request, conn, seconds)

    async def _streamed(
        self,
        request: Request,
        conn: ClientConnection,
        response: UpstreamResponse,
        req_id: bytes,
        started: float,
    ) -> None:
        try:
            await self._stream_response(request, conn, response, req_id)
        finally:
            self._finished(request, conn, started)

    async def _enforced(
        self, request: Request, conn: ClientConnection, identity: Identity, started: float
    ) -> None:
        try:
            assert self._keys is not None
            grant = await self._keys(request, conn, identity)
            if grant is None:
                return
            if identity.device_id is None and grant.device_id is not None:
                # A device key without X-Device-Id: the key says which device is calling, so
                # its block applies (and its activity is recorded).
                identity = Identity(identity.tenant_id, grant.device_id, identity.attributes)
            if self._admit(request, conn, identity):
                await self._proceed(request, conn, started=None, device=identity)
        finally:
            self._finished(request, conn, started)

    async def _proceed(
        self,
        request: Request,
        conn: ClientConnection,
        started: float | None,
        req_id: bytes | None = None,
        device: Identity | None = None,
    ) -> None:
        """Forward (or upgrade) an admitted request, in a task; with ``started``, it also
        observes the request's duration (the enforce path observes its own). ``device`` is who
        asked, for a tunnel that a later block must end."""
        try:
            if request.upgrade:
                await self._tunnel(request, conn, device)
                return
            await self._forward(
                request, conn, req_id or self._request_ids(request.lookup.get(b"x-request-id"))
            )
        except (ConnectionError, OSError):
            conn.close()  # the client went away; nothing to answer
        finally:
            if started is not None:
                self._finished(request, conn, started)

    async def _tunnel(
        self, request: Request, conn: ClientConnection, device: Identity | None
    ) -> None:
        if device is None or device.device_id is None:
            await self._upgrade(request, conn)
            return
        key = (device.tenant_id, device.device_id)
        self._tunnels.add(key, conn)
        try:
            await self._upgrade(request, conn)
        finally:
            self._tunnels.discard(key, conn)

    def _identify(self, request: Request, conn: ClientConnection) -> Identity | None:
        """Who is calling, or None after answering 4xx (a head the edge cannot take as it is, a
        bad identity) or 503 (no mirror yet)."""
        try:
            path = self._admission(request)
            identity = self._identity.read(path, request.lookup, request.repeated)
        except AdmissionError as exc:
            COUNT_INVALID.hit(request)
            extra = (
                b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
                if exc.status == 405
                else b""
            )
            problem(conn, request, exc.status, exc.title, exc.detail, extra, close=True)
            return None
        except IdentityError as bad:  # not "exc" again: mypyc gives both clauses one type
            COUNT_INVALID.hit(request)
            problem(conn, request, 400, "Invalid device identification", bad.detail)
            return None
        if not self._mirror.loaded and not self._fail_open:
            unavailable(conn, request, "The blocklist is not loaded yet.")
            return None
        return identity

    def _admit(self, request: Request, conn: ClientConnection, identity: Identity) -> bool:
        """Activity, denial, size and rate checks; answers and returns False to refuse."""
        device_id = identity.device_id
        request.tenant = identity.tenant_id
        if device_id is not None:
            request.device = device_id
            key = (identity.tenant_id, device_id)
            # Denied requests are recorded too: "last active" shows a blocked device still calling.
            self._recorder.record(key, identity.attributes, request.method == "POST")
            denial = self._mirror.denial(key)
            if denial is SHADOW:
                # Forwarded; the relay counts it as shadow_blocked when the upstream answers,
                # and the access log writes every request whose outcome is not "forwarded".
                request.outcome = SHADOW
            elif denial is not None:
                if denial == BLOCKED:
                    COUNT_BLOCKED.hit(request)
                    rest = BLOCKED_RESPONSES[request.keep_alive]
                else:
                    COUNT_DISABLED.hit(request)
                    rest = DISABLED_RESPONSES[request.keep_alive]
                request.status = 403
                conn.write(DENIAL_STATUS_LINE + conn.date_header + rest)
                return False
        length = request.content_length
        if length is not None and length > self._max_body:
            body_too_large(conn, request, self._max_body)
            return False
        if self._limiter is not None and device_id is not None:
            # Last: only a request that would otherwise be forwarded spends a token, so a
            # blocked device keeps its 403 and its denials do not eat the budget it will have
            # once unblocked.
            wait = self._limiter.admit((identity.tenant_id, device_id))
            if wait > 0.0:
                rate_limited(conn, request, retry_after(wait))
                return False
        return True
