"""The local channel between a proxy worker and its node's recorder process.

A Unix socket in the supervisor's private directory (mode 0700: only the same user can connect)
carries length-prefixed frames: a 4-byte big-endian length, then a :mod:`marshal` payload. marshal
is the fastest serialiser of tuples, strings and floats in the standard library (it is C, and it
is what ``.pyc`` files are made of); it is not safe against a hostile peer, and has none here:
both ends are this program, run by the same user, on the same interpreter version.

A worker (:class:`~gatekeeper.edge.activity.link.RecorderLink`) sends ``(sequence, devices,
key_uses)`` and waits for ``(sequence, error)``: ``error`` is ``None`` once everything in the
frame is committed to Postgres, else what went wrong. One frame is in flight per worker; a worker
whose recorder is gone keeps coalescing and sends again.
"""

from __future__ import annotations

import asyncio
import marshal
import struct
from collections.abc import Mapping

from gatekeeper.edge.activity.pending import PendingDevice, WireDevice
from gatekeeper.types import DeviceKey

__all__ = [
    "MAX_FRAME_BYTES",
    "RecorderRefused",
    "RecorderUnavailable",
    "decode_batch",
    "encode_batch",
    "read_frame",
    "write_frame",
]

_LENGTH = struct.Struct("!I")
# A frame of 5,000 devices is about 1 MB; far past that is a bug, not a batch.
MAX_FRAME_BYTES = 256 * 1024 * 1024
_MARSHAL_VERSION = 4


class RecorderUnavailable(ConnectionError):
    """The recorder process could not be reached, or went away before answering."""


class RecorderRefused(Exception):
    """The recorder answered that it could not write the frame (Postgres failed)."""


Batch = dict[DeviceKey, PendingDevice]


def encode_batch(
    sequence: int, batch: Mapping[DeviceKey, PendingDevice], key_uses: Mapping[str, float]
) -> bytes:
    devices = [entry.to_wire(key[0], key[1]) for key, entry in batch.items()]
    return marshal.dumps((sequence, devices, dict(key_uses)), _MARSHAL_VERSION)


def decode_batch(payload: bytes) -> tuple[int, Batch, dict[str, float]]:
    sequence, devices, key_uses = marshal.loads(payload)
    wires: list[WireDevice] = devices
    batch = {(wire[0], wire[1]): PendingDevice.from_wire(wire) for wire in wires}
    return sequence, batch, key_uses


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next frame's payload; ``asyncio.IncompleteReadError`` at a clean end."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return await reader.readexactly(length)


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(_LENGTH.pack(len(payload)) + payload)
