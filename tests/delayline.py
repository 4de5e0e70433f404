"""TCP relays that hold every chunk a fixed time in each direction: a userspace ``netem delay``.

Where the kernel has no ``sch_netem`` (``tc qdisc add … netem`` answers "Specified qdisc kind
is unknown"), tests/netnsrig.py shapes a link with one of these instead: the relay listens on
the root namespace's end of a veth pair and forwards to a server on loopback, and every chunk
it reads is written ``delay`` seconds after it arrived, in order. That is a delay line, not a
stop-and-wait: chunks that arrive during another's wait are not held longer for it, so the
hop adds ``delay`` each way whatever the traffic, as netem does (without its jitter, loss or
rate limits, which the tests do not ask for). ``delay=0`` forwards straight through (an
unshaped path to a server that listens on loopback only, e.g. PostgreSQL).

The relays run on an event loop of their own in a thread, so the test's own loop (its clients,
the admin app) does not make the hop slower or faster than it is. tests/faultproxy.py is the
other TCP forwarder; it injects faults (cuts, partitions, holds) into one connection path and
runs on the test's loop, which is what its tests need and this measurement must avoid.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["DelayRelays"]

_T = TypeVar("_T")
_CHUNK = 65536


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read."""
    loop = asyncio.get_running_loop()
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await line.get()
            if not data:
                return
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(_CHUNK):
            if delay:
                line.put_nowait((loop.time() + delay, data))
            else:
                writer.write(data)
                await writer.drain()
        line.put_nowait((loop.time() + delay, b""))  # the end, after what is on the line
        await delivering
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()  # so the other direction's reader ends too
    finally:
        delivering.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await delivering


class _Relay:
    """One listening address forwarding to one target, with the connections it carries."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self.writers |= {client_w, server_w}
        try:
            await asyncio.gather(
                _pump(client_r, server_w, self.delay), _pump(server_r, client_w, self.delay)
            )
        finally:
            for writer in (client_w, server_w):
                self.writers.discard(writer)
                writer.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        if self.server is not None:
            await self.server.wait_closed()


class DelayRelays:
    """Relays on a loop of their own: ``add()`` them, ``stop()`` closes them all (idempotent)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="delay-relays", daemon=True
        )
        self._thread.start()
        self._relays: list[_Relay] = []

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add(self, listen_host: str, target: tuple[str, int], delay: float) -> int:
        """Listen on ``listen_host`` (a free port, returned), forward to ``target``."""
        relay = _Relay(target, delay)

        async def start() -> int:
            relay.server = await asyncio.start_server(relay.accept, listen_host, 0)
            port: int = relay.server.sockets[0].getsockname()[1]
            return port

        port = self._run(start())
        self._relays.append(relay)
        return port

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        relays, self._relays = self._relays, []

        async def close_all() -> None:
            await asyncio.gather(*(r.close() for r in relays), return_exceptions=True)
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._run(close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
