"""The proxy's per-request path: identify, deny or admit, record, forward.

Everything a request needs is built once per worker in :class:`EdgeHandler`; a request does no
I/O but the upstream exchange (and, in enforce mode, one Redis read the first time a key is seen).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.web_exceptions import HTTPException
from multidict import CIMultiDict
from redis.exceptions import RedisError

from gatekeeper import metrics
from gatekeeper.blocklist import BLOCKED, BlocklistMirror
from gatekeeper.forward import RequestHeadBuilder, request_id, response_headers
from gatekeeper.identity import IdentityError, IdentityReader
from gatekeeper.keycache import KeyCache
from gatekeeper.problem import PROBLEM_CONTENT_TYPE, problem_body
from gatekeeper.recorder import ActivityRecorder
from gatekeeper.settings import Settings
from gatekeeper.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout
from gatekeeper.websocket import proxy_websocket

__all__ = ["EdgeHandler"]

_log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_R = metrics.REQUESTS
_FORWARDED = _R.labels("forwarded")
_BLOCKED = _R.labels("blocked")
_DISABLED = _R.labels("disabled")
_UNAUTHORIZED = _R.labels("unauthorized")
_INVALID = _R.labels("invalid")
_UPSTREAM_ERROR = _R.labels("upstream_error")
_UPSTREAM_TIMEOUT = _R.labels("upstream_timeout")
_UNAVAILABLE = _R.labels("unavailable")
_TOO_LARGE = _R.labels("too_large")


def _problem(status: int, title: str, detail: str, **headers: str) -> web.Response:
    return web.Response(status=status, body=problem_body(status, title, detail),
                        headers={"Content-Type": PROBLEM_CONTENT_TYPE, **headers})


# Denials are answered from pre-encoded bodies: the hot path for a blocked device is a set
# look-up and one write.
_BODY_BLOCKED = problem_body(403, "Device blocked", "This device is blocked.",
                             type_="device-blocked")
_BODY_DISABLED = problem_body(403, "Device disabled", "This device is disabled.",
                              type_="device-disabled")
_DENY_HEADERS = {"Content-Type": PROBLEM_CONTENT_TYPE}


class _BodyTooLarge(Exception):
    pass


class EdgeHandler:
    """The request handler of one proxy worker (for aiohttp's low-level ``web.Server``)."""

    def __init__(self, settings: Settings, *, mirror: BlocklistMirror, recorder: ActivityRecorder,
                 upstream: UpstreamPool, upstream_url: str, keys: KeyCache | None) -> None:
        self._identity = IdentityReader(settings)
        self._mirror = mirror
        self._recorder = recorder
        self._upstream = upstream
        self._upstream_url = upstream_url.rstrip("/")
        self._keys = keys
        self._fail_open = settings.fail_open
        self._max_body = settings.max_body_bytes
        host = upstream.host if upstream.port == 80 else f"{upstream.host}:{upstream.port}"
        self._heads = RequestHeadBuilder(host, trust_forwarded=settings.trust_forwarded_headers)
        self.draining = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await self._handle(request)
        except HTTPException as exc:  # aiohttp's own signals (rare): answer as problems
            _INVALID.inc()
            response = _problem(exc.status, exc.reason, exc.text or exc.reason)
        except Exception:
            # A bug, not a client's fault: answer a problem document, keep the worker alive.
            _log.exception("unexpected error in the proxy")
            _UPSTREAM_ERROR.inc()
            response = _problem(502, "Bad gateway", "The proxy failed to handle this request.")
        metrics.REQUEST_DURATION.observe(time.perf_counter() - started)
        if self.draining:
            response.force_close()
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = request.headers
        try:
            identity = self._identity.read(request.raw_path, headers)
        except IdentityError as exc:
            _INVALID.inc()
            return _problem(400, "Invalid device identification", exc.detail)
        if not self._mirror.loaded and not self._fail_open:
            _UNAVAILABLE.inc()
            return _problem(503, "Service unavailable", "The blocklist is not loaded yet.",
                            **{"Retry-After": "1"})
        device_id = identity.device_id
        if device_id is not None:
            key = (identity.tenant_id, device_id)
            # Denied requests are recorded too: "last active" shows a blocked device still calling.
            self._recorder.record(key, identity.attributes, request.method == "POST")
            denial = self._mirror.denial(key)
            if denial is not None:
                if denial == BLOCKED:
                    _BLOCKED.inc()
                    return web.Response(status=403, body=_BODY_BLOCKED, headers=_DENY_HEADERS)
                _DISABLED.inc()
                return web.Response(status=403, body=_BODY_DISABLED, headers=_DENY_HEADERS)
        if self._keys is not None:
            refusal = await self._authorize(request, identity.tenant_id, device_id)
            if refusal is not None:
                return refusal
        length = request.content_length
        if length is not None and length > self._max_body:
            _TOO_LARGE.inc()
            return _problem(413, "Request body too large",
                            f"The body limit is {self._max_body} bytes.", Connection="close")
        if headers.get("Upgrade", "").lower() == "websocket":
            return await proxy_websocket(request, self._upstream_url, _FORWARDED.inc)
        return await self._forward(request, length)

    async def _authorize(self, request: web.BaseRequest, tenant_id: str,
                         device_id: str | None) -> web.Response | None:
        assert self._keys is not None
        secret = request.headers.get("X-Api-Key")
        if secret is None:
            auth = request.headers.get("Authorization", "")
            if auth[:7].lower() == "bearer ":
                secret = auth[7:].strip()
        if not secret:
            _UNAUTHORIZED.inc()
            return _problem(401, "Unauthorized", "An API key or personal access token is required.",
                            **{"WWW-Authenticate": "Bearer"})
        digest = self._keys.digest(secret)
        try:
            grant = await self._keys.grant(digest)
        except (RedisError, OSError):
            _UNAVAILABLE.inc()
            return _problem(503, "Service unavailable", "Keys cannot be checked right now.",
                            **{"Retry-After": "1"})
        if (grant is None or grant.tenant_id != tenant_id
                or (grant.device_id is not None and device_id is not None
                    and grant.device_id != device_id)):
            _UNAUTHORIZED.inc()
            return _problem(401, "Unauthorized", "The key is not valid for this request.",
                            **{"WWW-Authenticate": "Bearer"})
        self._recorder.note_key_use(digest)
        return None

    async def _request_body(self, request: web.BaseRequest) -> AsyncIterator[bytes]:
        total = 0
        limit = self._max_body
        chunked = request.content_length is None
        async for chunk in request.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise _BodyTooLarge
            yield b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
        if chunked:
            yield b"0\r\n\r\n"

    async def _forward(self, request: web.BaseRequest, length: int | None) -> web.StreamResponse:
        headers = request.headers
        req_id = request_id(headers.get("X-Request-Id"))
        has_body = request.body_exists
        chunked = has_body and length is None
        head = self._heads.build(
            request.method, request.raw_path, request.raw_headers,
            client_ip=request.remote or "", scheme=request.scheme, host=headers.get("Host"),
            req_id=req_id, content_length=length if has_body else None, chunked=chunked,
        )
        body = self._request_body(request) if has_body else None
        sent = time.perf_counter()
        try:
            upstream = await self._upstream.send(head, body, head_request=request.method == "HEAD")
        except _BodyTooLarge:
            _TOO_LARGE.inc()
            return _problem(413, "Request body too large",
                            f"The body limit is {self._max_body} bytes.", Connection="close")
        except UpstreamTimeout:
            _UPSTREAM_TIMEOUT.inc()
            return _problem(504, "Upstream timed out", "The upstream did not answer in time.")
        except UpstreamError as exc:
            _UPSTREAM_ERROR.inc()
            _log.debug("upstream error: %s", exc)
            return _problem(502, "Bad gateway", "The upstream could not be reached.")
        metrics.UPSTREAM_DURATION.observe(time.perf_counter() - sent)
        _FORWARDED.inc()
        out_headers = response_headers(upstream.headers, req_id)
        whole = upstream.body_if_complete()
        if whole is not None:
            upstream.release()
            return web.Response(status=upstream.status, body=whole, headers=out_headers)
        return await self._stream_response(request, upstream, out_headers)

    async def _stream_response(self, request: web.BaseRequest, upstream: UpstreamResponse,
                               out_headers: CIMultiDict[str]) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=out_headers)
        length = _content_length(upstream.headers)
        if length is not None:
            response.content_length = length
        elif request.version >= (1, 1):
            response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            async for chunk in upstream.iter_body():
                await response.write(chunk)
            await response.write_eof()
        except (UpstreamError, ConnectionError, asyncio.CancelledError) as exc:
            # The head is already sent: the only honest signal left is to cut the connection.
            _log.debug("streaming aborted: %r", exc)
            response.force_close()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            upstream.release()
        return response


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
