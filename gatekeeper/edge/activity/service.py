"""The recorder process's work: take the workers' batches, merge them, write them, answer.

Workers hand over on the same wall-clock ticks (see :mod:`gatekeeper.edge.activity.recorder`), so
their frames for a tick arrive within milliseconds of each other. The service waits a short
gather window after the first frame of a group, merges every frame that arrived (one entry per
device, sightings in request-time order) and writes the group with one
:class:`~gatekeeper.edge.activity.writer.PostgresWriter`. Each frame is answered once the whole
group is committed, or with the error: its worker then keeps the batch and sends it again.
Frames that arrive while a group is being written form the next group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import time
from collections.abc import Mapping
from typing import Protocol

from gatekeeper.edge.activity.channel import decode_batch, read_frame, write_frame
from gatekeeper.edge.activity.pending import PendingDevice
from gatekeeper.types import DeviceKey

__all__ = ["GATHER_SECONDS", "RecorderService"]

_log = logging.getLogger(__name__)

# Longer than the spread of the workers' hand-overs on one tick (their event loops wake within a
# millisecond or two of each other; a busy one a few more), far shorter than the tick itself.
GATHER_SECONDS = 0.025
# At a stop, how long the connections get to send their last answers.
_ANSWER_GRACE_SECONDS = 1.0

_Frame = tuple[dict[DeviceKey, PendingDevice], dict[str, float], "asyncio.Future[str | None]"]


class _Writer(Protocol):
    """What the service writes with (a :class:`PostgresWriter`)."""

    async def write(
        self, batch: Mapping[DeviceKey, PendingDevice], key_uses: Mapping[str, float]
    ) -> None: ...


class RecorderService:
    def __init__(
        self, writer: _Writer, path: str, *, gather_seconds: float = GATHER_SECONDS
    ) -> None:
        self._writer = writer
        self._path = path
        self._gather = gather_seconds
        self._queue: list[_Frame] = []
        self._arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._unanswered: set[asyncio.Future[str | None]] = set()
        self._serving: set[asyncio.Task[object]] = set()
        self._run: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False
        self.groups_written = 0

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self._path)
        self._run = asyncio.create_task(self._write_groups(), name="recorder-groups")
        _log.info("recorder listening on %s", self._path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        if this is not None:
            self._serving.add(this)
            this.add_done_callback(self._serving.discard)
        self._clients.add(writer)
        loop = asyncio.get_running_loop()
        try:
            while not self._closing:
                try:
                    payload = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the worker went away (stopped, restarted, or gave up waiting)
                sequence, batch, key_uses = decode_batch(payload)
                answer: asyncio.Future[str | None] = loop.create_future()
                self._queue.append((batch, key_uses, answer))
                self._unanswered.add(answer)
                self._arrived.set()
                try:
                    error = await answer
                finally:
                    self._unanswered.discard(answer)
                if writer.is_closing():
                    return  # it gave up waiting; it sends the batch again
                write_frame(writer, marshal.dumps((sequence, error)))
                try:
                    await writer.drain()
                except ConnectionError:
                    return
        except Exception:
            # A malformed frame is a bug on the other end; drop that connection, keep serving.
            _log.exception("recorder: dropping a worker connection")
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _write_groups(self) -> None:
        while True:
            if not self._closing:
                await self._arrived.wait()
                if not self._closing:
                    await asyncio.sleep(self._gather)
            group, self._queue = self._queue, []
            self._arrived.clear()
            if not group:
                if self._closing:
                    return
                continue
            error = await self._write(group)
            for _, _, answer in group:
                if not answer.done():
                    answer.set_result(error)

    async def _write(self, group: list[_Frame]) -> str | None:
        batch, key_uses = _merge(group)
        try:
            await self._writer.write(batch, key_uses)
        except Exception as exc:
            if not self._failing:
                _log.warning(
                    "recorder: writing %d devices failed (%s); the workers keep them and retry",
                    len(batch),
                    str(exc) or type(exc).__name__,
                )
            self._failing = True
            return f"{type(exc).__name__}: {exc}"
        if self._failing:
            _log.info("recorder: writes recovered")
        self._failing = False
        self.groups_written += 1
        return None

    async def stop(self, deadline: float) -> None:
        """Stop accepting; answer what is queued (written by ``deadline``, monotonic, or
        answered with the failure so the workers keep it); close the connections."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        self._arrived.set()
        if self._run is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self._run), max(0.0, deadline - time.monotonic())
                )
            if not self._run.done():
                self._run.cancel()
                await asyncio.wait([self._run])
        # Queued, or in a group whose write was cut at the deadline: the workers keep those.
        for answer in self._unanswered:
            if not answer.done():
                answer.set_result("recorder stopping")
        # Each connection sends its answer, sees the stop and closes; one waiting for a frame
        # that never comes is closed here.
        if self._serving:
            await asyncio.wait(self._serving, timeout=_ANSWER_GRACE_SECONDS)
        for client in list(self._clients):
            client.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


def _merge(group: list[_Frame]) -> tuple[dict[DeviceKey, PendingDevice], dict[str, float]]:
    """One entry per device across the workers' frames, and the latest use of each key."""
    batch, key_uses = group[0][0], dict(group[0][1])
    for other, uses, _ in group[1:]:
        for key, entry in other.items():
            mine = batch.get(key)
            if mine is None:
                batch[key] = entry
            else:
                mine.combine(entry)
        for digest, used in uses.items():
            key_uses[digest] = max(used, key_uses.get(digest, used))
    return batch, key_uses
