"""Upgraded connections (WebSocket and any other ``Upgrade``): the request head goes upstream, then
bytes flow both ways untouched until either side closes.

Upgrades are rare and long-lived; once the upstream has answered ``101``, the proxy has nothing
left to decide, so a byte tunnel is both the simplest and the most faithful proxy.
"""

from __future__ import annotations

import asyncio
import contextlib

from gatekeeper.httpserver import ClientConnection

__all__ = ["UpstreamUnreachable", "tunnel"]

_CHUNK = 64 * 1024


class UpstreamUnreachable(Exception):
    """No connection to the upstream could be opened for the upgrade."""


async def tunnel(conn: ClientConnection, host: str, port: int, head: bytes,
                 connect_timeout: float) -> None:
    """Open a connection to the upstream, send ``head``, then splice the two connections."""
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise UpstreamUnreachable(str(exc)) from exc
    client_closed = asyncio.Event()

    def from_client(data: bytes | None) -> None:
        if data is None:
            client_closed.set()
            with contextlib.suppress(Exception):
                writer.close()
        else:
            writer.write(data)

    writer.write(head)
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
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
