"""An HTTP client of the admin API for the CLI: one session, bearer auth, problem documents
turned into :class:`ApiError`, a socket that cannot connect into :class:`Unreachable`, and
``Link: rel="next"`` pages followed on demand.

It speaks HTTP only: the core never imports ``admin_api`` (tests/test_layers.py).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from yarl import URL

from gatekeeper.runtime.admin_config import AdminTarget

__all__ = ["PAGE_MAX", "AdminClient", "ApiError", "Page", "Unreachable"]

# Long enough for a list page of 1,000 devices from a busy database, short enough that a
# script does not hang on a wedged server.
_TIMEOUT: Final = aiohttp.ClientTimeout(total=30, connect=10)
_USER_AGENT: Final = "gatekeeper-cli"
# The admin API's largest page (its `limit` maximum).
PAGE_MAX: Final = 1000


class ApiError(Exception):
    """The admin API answered with an error (exit 1): its problem document, or its status."""

    def __init__(self, status: int, title: str, detail: str | None, errors: list[str]) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors

    def lines(self) -> list[str]:
        """One line, two when the API named the bad fields."""
        first = f"{self.title} ({self.status})"
        if self.detail and self.detail != self.title:
            first += f": {self.detail}"
        return [first, *(["  " + "; ".join(self.errors)] if self.errors else [])]


class Unreachable(Exception):
    """No HTTP answer at all: refused, unresolvable, timed out (exit 1)."""


class Page:
    """One page of a list: its items and the URL of the next page, if any."""

    __slots__ = ("items", "next_url")

    def __init__(self, items: list[Any], next_url: URL | None) -> None:
        self.items = items
        self.next_url = next_url


def _problem(status: int, body: bytes) -> ApiError:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("title"), str):
        return ApiError(status, f"HTTP {status}", None, [])
    errors = [
        f"{e.get('field', '?')}: {e.get('message', '')}"
        for e in doc.get("errors") or []
        if isinstance(e, dict)
    ]
    detail = doc.get("detail")
    return ApiError(status, doc["title"], detail if isinstance(detail, str) else None, errors)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        verify = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        return f"certificate not trusted ({verify}); give the CA with --ca-file"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return exc.os_error.strerror or str(exc.os_error)
    return str(exc) or type(exc).__name__


class AdminClient:
    """Use as ``async with AdminClient(target) as client``: one session for a command."""

    def __init__(self, target: AdminTarget) -> None:
        self.target = target
        self._base = URL(target.url)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        ssl_context: ssl.SSLContext | bool = True  # aiohttp's default: the system's CAs
        if self.target.ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(self.target.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context),
            timeout=_TIMEOUT,
            headers={
                "Authorization": f"Bearer {self.target.token}",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            },
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    def tenant_path(self, *segments: str) -> URL:
        """``/api/{tenant}/seg/...`` under the base URL, each segment percent-encoded whole (a
        device id may hold ``/`` or ``?``)."""
        parts = ["api", self.target.tenant, *segments]
        path = "/".join(quote(p, safe="") for p in parts)
        return self._base.join(URL(f"/{path}", encoded=True))

    async def call(
        self,
        method: str,
        url: URL,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> tuple[Any, URL | None]:
        """The decoded JSON answer (``None`` for 204) and the next page's URL, if any.

        Redirects are not followed: the bearer token goes to the URL it was given for only."""
        assert self._session is not None, "use AdminClient as an async context manager"
        if params:
            url = url.update_query(params)
        try:
            async with self._session.request(
                method, url, json=body, allow_redirects=False
            ) as response:
                raw = await response.read()
                if response.status >= 300:
                    raise _problem(response.status, raw)
                next_link = response.links.get("next")
                next_url = URL(str(next_link["url"])) if next_link else None
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise Unreachable(
                f"cannot reach the admin API at {self.target.shown_url}: {_cause(exc)}"
            ) from exc
        if response.status == 204 or not raw:
            return None, next_url
        try:
            return json.loads(raw), next_url
        except ValueError as exc:
            raise ApiError(response.status, "The answer is not JSON", str(url), []) from exc

    async def pages(
        self, url: URL, params: Mapping[str, str], limit: int | None
    ) -> AsyncIterator[Page]:
        """Pages of a list until ``limit`` items were seen (``None``: all of them), each asked
        for no bigger than what is still wanted, so no page is ever cut. The last page yielded
        carries the next page's URL when more remain."""
        remaining = limit
        current: URL | None = url.update_query(params)
        while current is not None:
            size = PAGE_MAX if remaining is None else min(remaining, PAGE_MAX)
            items, next_url = await self.call("GET", current.update_query(limit=str(size)))
            if not isinstance(items, list):
                raise ApiError(200, "The answer is not a JSON list", str(current), [])
            if next_url is not None and next_url.origin() != self._base.origin():
                # The bearer token goes to the URL it was given for only.
                raise ApiError(200, "The next page is on another origin", str(next_url), [])
            yield Page(items, next_url)
            if remaining is not None:
                remaining -= len(items)
                if remaining <= 0:
                    return
            current = next_url
