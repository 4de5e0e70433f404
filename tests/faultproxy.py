"""A TCP forwarder between a client under test and a real server, for failure injection.

The test points the client at :attr:`FaultProxy.port` instead of the server, then breaks the path
in one of three ways, as a network or a restarted server would:

- :meth:`cut` closes every open connection and refuses new ones (server down, port closed);
- :meth:`blackhole` keeps the connections open but silently drops every byte (a partition);
- :meth:`reset` closes every open connection but keeps accepting new ones (a blip: a load
  balancer's idle kill, a fail-over, ``CLIENT KILL``); ``reset(hard=True)`` sends the client a
  TCP reset rather than a FIN, as a server's kernel does when the process dies with data unread.

:meth:`restore` undoes :meth:`cut` and :meth:`blackhole`. :meth:`hold` delays every answer from
the server until :meth:`release` (for races between a request in flight and something else).
Modelled on asyncpg's test fuzzer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

__all__ = ["FaultProxy"]


class _Link:
    """One client connection and its server connection, with a pump task per direction."""

    def __init__(
        self,
        proxy: FaultProxy,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.writers = (client_w, server_w)
        self.tasks = (
            asyncio.create_task(self._pump(client_r, server_w)),
            asyncio.create_task(self._pump(server_r, client_w, from_server=True)),
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        from_server: bool = False,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.proxy.dropping:
                    continue
                if from_server and self.proxy.held is not None:
                    self.proxy.held.append((writer, data))
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.abort()

    def linger_zero(self) -> None:
        """Make the coming close a reset (RST) instead of a FIN."""
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()

    async def close(self) -> None:
        self.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; start with ``async with`` or :meth:`start`."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self._target = (target_host, target_port)
        self.port = port
        self.dropping = False
        # While holding: the server's answers, not yet delivered, in order.
        self.held: list[tuple[asyncio.StreamWriter, bytes]] | None = None
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """As a Redis URL (the usual use); other clients take :attr:`port`."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        link = _Link(self, client_r, client_w, server_r, server_w)
        self._links.add(link)
        task = asyncio.ensure_future(asyncio.gather(*link.tasks, return_exceptions=True))
        task.add_done_callback(lambda _t: self._links.discard(link))

    async def _close_links(self) -> None:
        links, self._links = list(self._links), set()
        await asyncio.gather(*(link.close() for link in links))

    async def cut(self) -> None:
        """Close every connection and stop listening: the client sees a refused port."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._close_links()
        if server is not None:
            await server.wait_closed()

    async def blackhole(self) -> None:
        """Keep connections open, deliver nothing in either direction."""
        self.dropping = True

    async def reset(self, *, hard: bool = False) -> None:
        """Close every connection now (with a TCP reset if ``hard``); new ones are accepted and
        forwarded normally."""
        self.dropping = False
        if hard:
            for link in self._links:
                link.linger_zero()
        await self._close_links()

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for writer, data in held:
            if not writer.transport.is_closing():
                writer.write(data)

    async def restore(self) -> None:
        self.dropping = False
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.cut()
