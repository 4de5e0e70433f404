"""Write back-pressure for one connection: the transport says when its buffer is too full
(``pause_writing``) and when it has room again (``resume_writing``); a writer that must not run
ahead awaits :meth:`FlowControl.drain` after each write.

Both sides of the proxy own one (the client connection and each upstream connection), so the
rules live here once: a waiter future exists only while someone waits (pausing allocates
nothing), and a connection lost while paused fails that waiter with the owner's exception, or
the next drain if nobody waits yet, never a future nobody awaits (asyncio would log "Future
exception was never retrieved" when it is collected).
"""

from __future__ import annotations

import asyncio

__all__ = ["FlowControl"]


class FlowControl:
    """Owned by a protocol, which forwards its ``pause_writing``/``resume_writing`` here and
    reports its loss with :meth:`connection_lost`. One writer drains at a time."""

    __slots__ = ("_lost", "_waiter", "writing_paused")

    def __init__(self) -> None:
        self.writing_paused = False  # read-only outside this class
        self._lost: Exception | type[Exception] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | type[Exception]) -> None:
        """The connection is gone (or given up by its owner): what is stuck in a paused buffer
        will never be written, so a pending drain and every later one raise ``exc``. The first
        report wins: an owner's reason (a timeout) beats the close it causes. Not paused, there
        is nothing to report: writes after the loss are the owner's to ignore.

        ``exc`` may be a class, instantiated only when raised: most connections close unpaused,
        and one that closes after each request must not pay for an exception it never uses."""
        if not self.writing_paused or self._lost is not None:
            return
        self._lost = exc
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def drain(self) -> None:
        """Return once the transport has room (at once if it has), or raise the loss."""
        if not self.writing_paused:
            return
        if self._lost is not None:
            raise self._lost
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            # Cancelled, the waiter is cancelled with us: drop it so the next drain makes a
            # live one. (Woken, it is already gone, and a newer waiter must be left alone.)
            if self._waiter is waiter:
                self._waiter = None
