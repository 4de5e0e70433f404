"""WebSocket upgrades: the request goes upstream on a connection of its own, and the client's
connection becomes a byte tunnel only once the upstream has answered ``101 Switching Protocols``.

Until that answer, every byte the client sent after the upgrade request is still HTTP: were the
connection spliced earlier, an upstream refusing the upgrade would leave the client a raw channel
to the upstream, past every check (request smuggling). So the upstream's answer is read first; a
refusal is relayed as an ordinary response and the client's connection goes on as HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.edge.upstream.connection import UpstreamConnectError, UpstreamError, UpstreamTimeout
from gatekeeper.edge.upstream.tls import UpstreamTls
from gatekeeper.types import DeviceKey

__all__ = ["OpenTunnels", "Refused", "Switched", "open_websocket", "splice"]

_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024
_MAX_REFUSAL_BODY = 1024 * 1024  # a refusal is a short error page; more is a broken upstream


@dataclass(slots=True)
class Switched:
    """The upstream switched protocols: its raw ``101`` head, and the bytes that followed it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    head: bytes
    rest: bytes


@dataclass(slots=True)
class Refused:
    """The upstream answered the upgrade with an ordinary response (its connection is closed)."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Answer:
    """httptools callbacks collecting the upstream's answer to the upgrade request."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.head_done = False
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.reason, self.headers = b"", []  # an interim answer (100, 103): wait on
            return
        self.status = status
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > _MAX_REFUSAL_BODY:
            raise UpstreamError("the upstream's refusal of an upgrade is too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    def framed_by_close(self) -> bool:
        return not any(
            n.lower() in (b"content-length", b"transfer-encoding") for n, _ in self.headers
        )


async def open_websocket(
    host: str,
    port: int,
    head: bytes,
    *,
    connect_timeout: float,
    read_timeout: float,
    tls: UpstreamTls | None = None,
) -> Switched | Refused:
    """Send the upgrade request ``head`` on a new connection (TLS with the pool's context for
    an ``https://`` upstream) and read the answer."""
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=tls.context if tls is not None else None,
                server_hostname=tls.server_name if tls is not None else None,
            )
    except TimeoutError as exc:
        raise UpstreamTimeout("upstream connect timed out") from exc
    except OSError as exc:
        if isinstance(exc, ssl.SSLError) and tls is not None:
            tls.handshake_failed(exc, host, port)
        raise UpstreamConnectError(f"cannot connect to upstream: {exc}") from exc
    try:
        writer.write(head)
        outcome = await _read_answer(reader, writer, read_timeout)
    except BaseException:
        await _close(writer)
        raise
    if isinstance(outcome, Refused):
        await _close(writer)
    return outcome


async def _read_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_timeout: float
) -> Switched | Refused:
    answer = _Answer()
    received = bytearray()
    while True:
        try:
            async with asyncio.timeout(read_timeout):
                data = await reader.read(_CHUNK)
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream read timed out") from exc
        if not data:
            if answer.head_done and answer.framed_by_close():
                return _refused(answer)
            raise UpstreamError("upstream closed the connection before answering")
        if not answer.head_done:
            received += data
        try:
            answer.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if answer.status != 101:
                raise UpstreamError("upstream switched protocols without a 101") from None
            offset = upgrade.args[0] if upgrade.args else len(data)
            rest = data[offset:]
            return Switched(reader, writer, bytes(received[: len(received) - len(rest)]), rest)
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"malformed response from upstream: {exc}") from exc
        if answer.head_done and answer.status == 101:
            raise UpstreamError("upstream answered 101 without switching protocols")
        if answer.complete:
            return _refused(answer)
        if not answer.head_done and len(received) > _MAX_HEAD:
            raise UpstreamError("upstream response head too large")


def _refused(answer: _Answer) -> Refused:
    return Refused(answer.status, answer.reason, answer.headers, b"".join(answer.body))


async def splice(conn: ClientConnection, switched: Switched) -> None:
    """Pass bytes both ways, untouched, until either side closes."""
    reader, writer = switched.reader, switched.writer

    def from_client(data: bytes | None) -> None:
        if data is None:
            with contextlib.suppress(Exception):
                writer.close()
        else:
            writer.write(data)

    conn.write(switched.head + switched.rest)
    leftover = conn.take_over(from_client)
    if leftover:
        writer.write(leftover)
    try:
        while not conn.closed:
            data = await reader.read(_CHUNK)
            if not data:
                break
            conn.write(data)
            await conn.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        conn.close()
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class OpenTunnels:
    """Open WebSocket tunnels by the device that opened them. A tunnel carries no more requests
    to check, so a block (or disable) made while it is open must end it: the mirror calls
    :meth:`enforce` on every such change, and tunnels are few, so it scans them all."""

    __slots__ = ("_by_device", "_denied")

    def __init__(self, denied: Callable[[DeviceKey], bool]) -> None:
        self._denied = denied
        self._by_device: dict[DeviceKey, set[ClientConnection]] = {}

    def add(self, key: DeviceKey, conn: ClientConnection) -> None:
        self._by_device.setdefault(key, set()).add(conn)

    def discard(self, key: DeviceKey, conn: ClientConnection) -> None:
        conns = self._by_device.get(key)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_device[key]

    def enforce(self) -> None:
        for key in [k for k in self._by_device if self._denied(k)]:
            for conn in self._by_device.pop(key):
                conn.close()  # the splice ends with it, and the upstream side is closed
