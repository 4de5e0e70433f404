"""The console's only way to read or change anything: HTTP requests to this admin API's own
routes, on the socket the browser's request arrived on, with the session's bearer token.

So every console action passes the same middlewares (tenant check, body limits, problem
documents, metrics), the same ``authorize`` (scopes, tenant isolation), the same validation and
writes the same audit entries as a ``curl`` would; the console has no database access of its
own. A loopback call costs well under a millisecond, nothing next to a page render.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from admin_api.console.session import Session
from gatekeeper.settings import Settings

__all__ = ["API_CLIENT", "ApiClient", "ApiError", "ApiResult", "api_path"]

_TIMEOUT: Final = aiohttp.ClientTimeout(total=30)


@dataclass(frozen=True, slots=True)
class ApiResult:
    """A successful answer: its status, JSON body (None for 204) and the next page's cursor."""

    status: int
    body: Any
    next_cursor: str | None = None


@dataclass(slots=True)
class ApiError(Exception):
    """A problem document the API answered with, kept for a readable message on the page."""

    status: int
    title: str
    detail: str | None = None
    errors: list[dict[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message

    @property
    def message(self) -> str:
        text = self.detail or self.title
        if self.errors:
            text += ": " + "; ".join(f"{e.get('field')} {e.get('message')}" for e in self.errors)
        return text

    def as_flash(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message}


def api_path(tenant: str, *segments: str) -> str:
    """``/api/{tenant}/...`` with every segment escaped (device ids may hold '/', '?', '#')."""
    return "/".join(["/api", *(quote(s, safe="") for s in (tenant, *segments))])


def _base_url(request: web.Request) -> URL:
    """The admin API on the very socket this request came in on: right whatever the bind
    address (0.0.0.0 included), port 0, or TLS."""
    transport = request.transport
    if transport is None:
        raise ApiError(503, "Service unavailable", "The connection closed")
    host, port = transport.get_extra_info("sockname")[:2]
    scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
    return URL.build(scheme=scheme, host=host, port=port)


class ApiClient:
    """One keep-alive client session per app, opened and closed by the console's cleanup_ctx."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: aiohttp.ClientSession | None = None
        self._tls: tuple[int, ssl.SSLContext] | None = None

    async def open(self) -> None:
        self._client = aiohttp.ClientSession(timeout=_TIMEOUT, headers={"User-Agent": "console"})

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _ssl(self, url: URL) -> ssl.SSLContext | bool:
        """For a TLS listener: trust exactly the certificate this process serves (it is this
        process we call, whatever name the certificate carries), reloaded when the file
        changes as the listener reloads it on SIGHUP."""
        cert = self._settings.tls_cert_file
        if url.scheme != "https" or cert is None:
            return True
        stamp = os.stat(cert).st_mtime_ns
        if self._tls is None or self._tls[0] != stamp:
            context = ssl.create_default_context(cafile=cert)
            context.check_hostname = False
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            self._tls = (stamp, context)
        return self._tls[1]

    @asynccontextmanager
    async def _send(
        self,
        request: web.Request,
        session: Session,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        json: Any,
        accept: str,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        if self._client is None:
            raise RuntimeError("the console's API client is not open")
        base = _base_url(request)
        url = base.join(URL(path, encoded=True)).with_query(dict(query or {}))
        headers = {"Authorization": f"Bearer {session.token}", "Accept": accept}
        try:
            response = await self._client.request(
                method, url, json=json, headers=headers, ssl=self._ssl(url)
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Only the request itself: a failure while the caller relays the body is its own.
            raise ApiError(
                503, "Service unavailable", f"The admin API did not answer ({type(exc).__name__})"
            ) from exc
        try:
            if response.status >= 400:
                raise await _error(response)
            yield response
        finally:
            response.release()

    async def call(
        self,
        request: web.Request,
        session: Session,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> ApiResult:
        """``method path`` as the signed-in admin; :class:`ApiError` for any problem answer."""
        async with self._send(
            request, session, method, path, query, json, "application/json"
        ) as response:
            body = await response.json() if response.status != 204 else None
            return ApiResult(response.status, body, _next_cursor(response))

    @asynccontextmanager
    async def stream(
        self, request: web.Request, session: Session, path: str, query: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The API's streamed CSV for ``path``, to relay chunk by chunk."""
        async with self._send(request, session, "GET", path, query, None, "text/csv") as response:
            yield response


def _next_cursor(response: aiohttp.ClientResponse) -> str | None:
    link = response.links.get("next")
    if link is None:
        return None
    return URL(str(link.get("url", ""))).query.get("cursor")


async def _error(response: aiohttp.ClientResponse) -> ApiError:
    try:
        problem = await response.json(content_type=None)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        return ApiError(response.status, response.reason or "Error")
    errors = problem.get("errors")
    return ApiError(
        response.status,
        str(problem.get("title") or response.reason or "Error"),
        problem.get("detail") if isinstance(problem.get("detail"), str) else None,
        [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
    )


API_CLIENT = web.AppKey("console_api_client", ApiClient)
