"""Writing a batch of coalesced activity to Postgres: key ranges in a few concurrent transactions.

The recorder process writes what the workers hand it with this; a proxy started without a
recorder process (tests, embedding) writes its own batches with it. Either way a batch counts as
written only once every one of its transactions committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import asyncpg

from gatekeeper.edge import storemetrics as metrics
from gatekeeper.edge.activity.pending import PendingDevice
from gatekeeper.edge.activity.sql import DEFAULT_CLONE_WINDOW_SECONDS, write_batch
from gatekeeper.types import DeviceKey

__all__ = ["FLUSH_TIMEOUT_SECONDS", "PostgresWriter"]

# A batch is written in pieces of at most this many devices, up to ``connections`` at once (so
# Postgres works on several cores). Each piece is one transaction; preparing one holds the event
# loop for well under a millisecond.
_PIECE_DEVICES = 250

# A piece takes milliseconds; even a loaded Postgres (a checkpoint's I/O, a lock held by an admin
# transaction) answers in well under a second. Past this a piece is abandoned and the batch
# retried: long enough not to retry healthy-but-slow work, short enough that a hung server shows
# within seconds (see docs/decisions.md, "the edge keeps its promise").
FLUSH_TIMEOUT_SECONDS = 5.0


class PostgresWriter:
    """``write(batch, key_uses)`` returns once all of it is committed, or raises."""

    __slots__ = ("_clone_window", "_known", "_max_known", "_parallel", "_pool", "_timeout")

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        connections: int = 2,
        timeout: float = FLUSH_TIMEOUT_SECONDS,
        max_known: int = 1_000_000,
        clone_window: float = DEFAULT_CLONE_WINDOW_SECONDS,
    ) -> None:
        self._pool = pool
        # Clone detection's window (``clone_window_seconds``), passed to every transaction.
        self._clone_window = clone_window
        # Concurrent transactions per batch; keep it within the pool's size.
        self._parallel = max(1, connections)
        self._timeout = timeout
        # Devices this writer has committed: their next writes skip the insert-new phase. A
        # device deleted since is upserted back by the second phase, so a stale entry is safe.
        self._known: set[DeviceKey] = set()
        self._max_known = max_known
        metrics.STORE_UP.labels("postgres")  # reported (as down) until the first commit

    async def write(
        self, batch: Mapping[DeviceKey, PendingDevice], key_uses: Mapping[str, float]
    ) -> None:
        """Write ``batch``; raises the first failure (the caller keeps the batch and retries).

        A range that fails leaves the others committed (writing one again is harmless: its
        timestamps do not move back and its history is not repeated). After the first failure
        no further range is started: one timeout is enough to know Postgres is in trouble, and a
        hung server would otherwise cost a timeout per range.
        """
        if not batch and not key_uses:
            return
        if len(self._known) > self._max_known:
            self._known.clear()
        started = time.perf_counter()
        parts = _split(batch)
        failures: list[Exception] = []
        slots = asyncio.Semaphore(self._parallel)
        committed = 0

        async def write(index: int) -> None:
            nonlocal committed
            async with slots:
                if failures:
                    return
                await asyncio.sleep(0)  # let other work in before preparing this piece
                part = parts[index]
                try:
                    conflicts = await write_batch(
                        self._pool,
                        part,
                        key_uses if index == 0 else {},
                        self._known,
                        timeout=self._timeout,
                        clone_window=self._clone_window,
                    )
                except Exception as exc:
                    failures.append(exc)
                    return
                if conflicts:
                    metrics.DEVICE_CONFLICTS.inc(conflicts)  # committed: counted once
                self._known.update(part)
                committed += len(part)

        try:
            await asyncio.gather(*(write(i) for i in range(len(parts))))
        finally:
            metrics.ACTIVITY_FLUSHED.inc(committed)
        if failures:
            metrics.STORE_UP.labels("postgres").set(0)
            raise failures[0]
        metrics.STORE_UP.labels("postgres").set(1)
        metrics.ACTIVITY_FLUSH_DURATION.observe(time.perf_counter() - started)


def _split(batch: Mapping[DeviceKey, PendingDevice]) -> list[Mapping[DeviceKey, PendingDevice]]:
    """Contiguous key ranges of at most ``_PIECE_DEVICES``: each is one transaction."""
    if len(batch) <= _PIECE_DEVICES:
        return [batch]
    keys = sorted(batch)
    return [
        {key: batch[key] for key in keys[i : i + _PIECE_DEVICES]}
        for i in range(0, len(keys), _PIECE_DEVICES)
    ]
