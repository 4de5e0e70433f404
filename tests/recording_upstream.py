"""An upstream that records every request it parses, and reads them as a lenient server would.

The bypass tests ask one question of it: did a request of the blocked device reach an upstream
that would serve it under the tenant the device is blocked in? "Would serve" is judged the way
the most forgiving servers behind a proxy read a request (WSGI/CGI map ``_`` to ``-`` in header
names; many routers percent-decode, treat ``\\`` as ``/``, strip ``;params``, merge slashes,
resolve dot segments and ignore case), so a trick that works on any of them shows up here.

It answers like a real upstream: WebSocket upgrades to a path without ``refuse`` get ``101``
(after which the connection is opaque), every other upgrade gets ``400`` and the connection
goes on as HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

import httptools

__all__ = ["LenientView", "RecordingUpstream", "Seen", "lenient_view"]


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class LenientView:
    tenant: str
    device_ids: frozenset[str]


def lenient_view(seen: Seen, default_tenant: str = "default") -> LenientView:
    """The tenant and device ids the most forgiving upstream would read from ``seen``."""
    target = seen.target
    if "://" in target:
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    path = target.partition("?")[0]
    for _ in range(3):  # servers that decode more than once
        path = unquote(path)
    path = path.replace("\\", "/")
    segments = [s.partition(";")[0] for s in path.split("/")]
    path = posixpath.normpath("/" + "/".join(s for s in segments if s)).lower()
    parts = [p for p in path.split("/") if p]
    tenant = parts[1] if len(parts) >= 2 and parts[0] == "api" else default_tenant
    ids = frozenset(
        value.decode("latin-1").strip()
        for name, value in seen.headers
        if name.lower().replace(b"_", b"-") == b"x-device-id"
    )
    return LenientView(tenant, ids)


class _Conn(asyncio.Protocol):
    def __init__(self, owner: RecordingUpstream) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.opaque = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.owner.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        while data and not self.opaque:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                offset = upgrade.args[0] if upgrade.args else len(data)
                data = data[offset:]
                if not self._answer_upgrade():
                    self.parser = httptools.HttpRequestParser(self)  # refused: HTTP goes on
            except httptools.HttpParserError:
                self._write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                assert self.transport is not None
                self.transport.close()
                return

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        seen = Seen(
            self.parser.get_method().decode(), self.url.decode("latin-1"), tuple(self.headers)
        )
        self.owner.seen.append(seen)
        if not self.parser.should_upgrade():
            self._write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nupstream ok")

    def _answer_upgrade(self) -> bool:
        names = {n.lower(): v.lower() for n, v in self.headers}
        if names.get(b"upgrade") == b"websocket" and b"refuse" not in self.url:
            self._write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n"
            )
            self.opaque = True
            return True
        self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\nrefused")
        return False

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class RecordingUpstream:
    """``async with RecordingUpstream() as upstream``: ``upstream.url``, ``upstream.seen``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.transports: set[asyncio.Transport] = set()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RecordingUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.transports):
                transport.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def leaks(self, device_id: str, tenants: set[str]) -> list[Seen]:
        """Requests of ``device_id`` that a lenient upstream would serve in one of ``tenants``."""
        out = []
        for seen in self.seen:
            view = lenient_view(seen)
            if device_id in view.device_ids and view.tenant in tenants:
                out.append(seen)
        return out
