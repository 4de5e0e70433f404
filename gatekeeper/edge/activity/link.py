"""A proxy worker's end of the channel to its node's recorder process."""

from __future__ import annotations

import asyncio
import marshal
from collections.abc import Mapping

from gatekeeper.edge import metrics
from gatekeeper.edge.activity.channel import (
    RecorderRefused,
    RecorderUnavailable,
    encode_batch,
    read_frame,
    write_frame,
)
from gatekeeper.edge.activity.pending import PendingDevice
from gatekeeper.types import DeviceKey

__all__ = ["ACK_TIMEOUT_SECONDS", "RecorderLink"]

# How long a worker waits for the recorder to answer a frame: the recorder merges the frames of
# every worker and writes them in pieces of at most 5 s each, a few at a time. Past this the
# worker assumes it is stuck, reconnects and sends again (a write that did land meanwhile is
# harmless to repeat).
ACK_TIMEOUT_SECONDS = 30.0


class RecorderLink:
    """A worker's end of the channel: a :class:`~gatekeeper.edge.activity.recorder.BatchSink`
    whose ``write`` returns once the recorder process reports the batch committed."""

    __slots__ = ("_ack_timeout", "_path", "_reader", "_sequence", "_writer")

    def __init__(self, path: str, *, ack_timeout: float = ACK_TIMEOUT_SECONDS) -> None:
        self._path = path
        self._ack_timeout = ack_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._sequence = 0
        metrics.RECORDER_UP.set(0)

    async def write(
        self, batch: Mapping[DeviceKey, PendingDevice], key_uses: Mapping[str, float]
    ) -> None:
        self._sequence += 1
        sequence = self._sequence
        payload = encode_batch(sequence, batch, key_uses)
        try:
            async with asyncio.timeout(self._ack_timeout):
                reader, writer = await self._connection()
                write_frame(writer, payload)
                await writer.drain()
                answered, error = marshal.loads(await read_frame(reader))
        except (OSError, EOFError, TimeoutError, ValueError) as exc:
            self.close()
            metrics.RECORDER_UP.set(0)
            raise RecorderUnavailable(f"recorder process: {_describe(exc)}") from exc
        except BaseException:
            # Cancelled mid-exchange: the answer would be read as the next frame's.
            self.close()
            raise
        metrics.RECORDER_UP.set(1)
        if answered != sequence:
            self.close()
            raise RecorderUnavailable(f"recorder answered frame {answered}, not {sequence}")
        if error is not None:
            raise RecorderRefused(error)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_unix_connection(self._path)
        return self._reader, self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed before the answer"
    return str(exc) or type(exc).__name__
