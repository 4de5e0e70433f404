"""Device activity: coalesced in memory per request, written to Postgres in set-based batches.

:meth:`ActivityRecorder.record` runs on the proxy's hot path: a dict look-up and a few stores, no
I/O. A background task (:meth:`ActivityRecorder.run`) flushes every ``flush_interval`` or as soon as
``flush_max_devices`` devices are pending. A device seen 1,000 times between flushes is one row.
Attribute changes seen in between are kept in order, each with the time its request was seen, so
history is exact. When Postgres fails, the taken batch is merged back and retried with backoff;
the buffer is bounded, and a device that does not fit is dropped and counted.

Every piece of a flush is bounded by ``flush_timeout`` (default :data:`FLUSH_TIMEOUT_SECONDS`),
from acquiring a connection to the commit, so a hung Postgres shows as flush errors and retries,
never as a flush that waits forever. A device counts as flushed only once its commit returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import asyncpg

from gatekeeper.domain.identity import Attributes
from gatekeeper.edge import metrics
from gatekeeper.edge.activity.pending import PendingDevice, merge_attributes
from gatekeeper.edge.activity.sql import write_batch
from gatekeeper.types import SYSTEM_CLOCK, Clock, DeviceKey

__all__ = ["FLUSH_TIMEOUT_SECONDS", "ActivityRecorder", "PendingDevice"]

_log = logging.getLogger(__name__)

# A batch is written in pieces of at most this many devices, up to ``flush_connections`` at once
# (so Postgres works on several cores). Preparing a piece holds the event loop for well under a
# millisecond; a whole 5,000-device batch at once held it for tens of milliseconds, which is what
# requests waiting behind a flush saw as their p99.
_PIECE_DEVICES = 250
_SCAN_SLICE = 2_000

# A piece takes milliseconds; even a loaded Postgres (a checkpoint's I/O, a lock held by an admin
# transaction) answers in well under a second. Past this a flush is abandoned and retried: long
# enough not to retry healthy-but-slow work, short enough that a hung server shows within
# seconds (see docs/decisions.md, "the edge keeps its promise").
FLUSH_TIMEOUT_SECONDS = 5.0
_STORE_ERRORS = (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # a timeout's message is empty


class ActivityRecorder:
    __slots__ = (
        "_clock",
        "_flush_max",
        "_interval",
        "_known",
        "_max_pending",
        "_parallel",
        "_pending",
        "_pool",
        "_retry_max",
        "_timeout",
        "_touch",
        "_wake",
        "dropped",
        "flushed_rows",
        "key_uses",
        "last_flush_ok",
    )

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        flush_interval: float,
        flush_max_devices: int,
        max_pending: int,
        retry_max_seconds: float,
        flush_connections: int = 2,
        touch_interval: float = 0.0,
        flush_timeout: float = FLUSH_TIMEOUT_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._pool = pool
        # What a request is stamped with and when a touch is due; the flush loop's own waits
        # (interval, backoff) and the shutdown deadline stay on the event loop's clock.
        self._clock = clock
        self._timeout = flush_timeout
        # Devices this process has written, with when (monotonic): their flushes skip the
        # insert-new phase, and a device that only "was active again" is rewritten at most every
        # ``touch_interval``. Bounded by the buffer size; when full it starts over.
        self._known: dict[DeviceKey, tuple[float, Attributes]] = {}
        self._touch = touch_interval
        # Concurrent transactions per flush; keep it within the pool's size.
        self._parallel = max(1, flush_connections)
        self._interval = flush_interval
        self._flush_max = flush_max_devices
        self._max_pending = max_pending
        self._retry_max = retry_max_seconds
        self._pending: dict[DeviceKey, PendingDevice] = {}
        self._wake = asyncio.Event()
        # digest hex -> last use, for personal access tokens' and keys' lastUsedAt.
        self.key_uses: dict[str, float] = {}
        self.dropped = 0
        self.flushed_rows = 0
        self.last_flush_ok = True

    def record(self, key: DeviceKey, attributes: Attributes, is_post: bool) -> None:
        """Note one request of a device. Hot path: keep it allocation-light."""
        now = self._clock.wall()
        entry = self._pending.get(key)
        if entry is None:
            pending = self._pending
            if len(pending) >= self._max_pending:
                self.dropped += 1
                metrics.ACTIVITY_DROPPED.inc()
                return
            written = self._known.get(key)
            news = (
                is_post or written is None or merge_attributes(attributes, written[1]) != written[1]
            )
            pending[key] = PendingDevice(attributes, now, is_post, news)
            if len(pending) % self._flush_max == 0:
                self._wake.set()  # a batch's worth more (deferred touches may stay behind)
            return
        entry.last_active = now
        if is_post:
            entry.last_upload = now
            entry.news = True
        if attributes != entry.attributes:
            merged = merge_attributes(attributes, entry.attributes)
            if merged != entry.attributes:
                entry.attributes = merged
                entry.changes.append((now, merged))
                entry.news = True

    def note_key_use(self, digest: str) -> None:
        self.key_uses[digest] = self._clock.wall()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _take(self, everything: bool = False) -> dict[DeviceKey, PendingDevice]:
        """The next batch: every device with news, and those only "active again" whose last
        write is older than the touch interval (all of them when ``everything``)."""
        pending = self._pending
        if everything or self._touch <= 0:
            if len(pending) <= self._flush_max:
                self._pending = {}
                return pending
            keys = list(pending)[: self._flush_max]
        else:
            stale_before = self._clock.monotonic() - self._touch
            known = self._known
            keys = []
            # A snapshot, scanned in slices with the loop served in between: requests keep
            # adding to the buffer meanwhile (what they add waits for the next flush).
            snapshot = list(pending.items())
            for start in range(0, len(snapshot), _SCAN_SLICE):
                if start:
                    await asyncio.sleep(0)
                for key, entry in snapshot[start : start + _SCAN_SLICE]:
                    written = known.get(key)
                    if entry.news or written is None or written[0] <= stale_before:
                        keys.append(key)
                if len(keys) >= self._flush_max:
                    del keys[self._flush_max :]
                    break
        pending = self._pending
        return {key: pending.pop(key) for key in keys if key in pending}

    def _put_back(self, batch: dict[DeviceKey, PendingDevice]) -> None:
        """Return a failed batch: older than whatever arrived meanwhile, so it goes first."""
        newer = self._pending
        self._pending = batch
        for key, entry in newer.items():
            old = batch.get(key)
            if old is None:
                if len(batch) < self._max_pending:
                    batch[key] = entry
                else:
                    self.dropped += 1
                    metrics.ACTIVITY_DROPPED.inc()
            else:
                old.absorb(entry)

    @staticmethod
    def _split(batch: dict[DeviceKey, PendingDevice]) -> list[dict[DeviceKey, PendingDevice]]:
        """Contiguous key ranges of at most ``_PIECE_DEVICES``: each is one transaction, and the
        event loop serves requests between preparing one and the next."""
        if len(batch) <= _PIECE_DEVICES:
            return [batch]
        keys = sorted(batch)
        return [
            {key: batch[key] for key in keys[i : i + _PIECE_DEVICES]}
            for i in range(0, len(keys), _PIECE_DEVICES)
        ]

    async def flush_once(self, everything: bool = False) -> int:
        """Write one batch; returns devices written. Raises on a database error (batch kept).

        A large batch is written as key ranges in a few concurrent transactions; a range that
        fails goes back to the buffer and the others stay written (writing one again is harmless:
        its timestamps do not move back and its history is not repeated). After the first failure
        no further range is started: one timeout is enough to know Postgres is in trouble, and a
        hung server would otherwise cost a timeout per range.
        """
        batch = await self._take(everything)
        uses, self.key_uses = self.key_uses, {}
        if len(self._known) > self._max_pending:
            self._known.clear()
        metrics.ACTIVITY_PENDING.set(len(self._pending))
        if not batch and not uses:
            return 0
        started = time.perf_counter()
        parts = self._split(batch)
        written: set[int] = set()
        failures: list[Exception] = []
        slots = asyncio.Semaphore(self._parallel)

        async def write(index: int) -> None:
            async with slots:
                if failures:
                    return  # stays unwritten: restored below, retried with backoff
                await asyncio.sleep(0)  # let waiting requests in before preparing this piece
                try:
                    await write_batch(
                        self._pool,
                        parts[index],
                        uses if index == 0 else {},
                        self._known,
                        timeout=self._timeout,
                    )
                except Exception as exc:
                    failures.append(exc)
                    return
            # Committed. Stamp each device a random part of the touch interval early, so devices
            # first written together do not all come due together: touches spread over the
            # flushes instead of arriving as one large batch every interval.
            now = self._clock.monotonic()
            spread = self._touch / 2
            self._known.update(
                {
                    key: (now - spread * random.random(), entry.attributes)
                    for key, entry in parts[index].items()
                }
            )
            written.add(index)

        try:
            await asyncio.gather(*(write(i) for i in range(len(parts))))
        finally:
            if len(written) < len(parts):
                self._restore(
                    [p for i, p in enumerate(parts) if i not in written],
                    uses if 0 not in written else {},
                )
            # Only committed pieces count, whatever happened to the others.
            done = sum(len(parts[i]) for i in written)
            metrics.ACTIVITY_FLUSHED.inc(done)
            self.flushed_rows += done
        if failures:
            raise failures[0]
        metrics.ACTIVITY_FLUSH_DURATION.observe(time.perf_counter() - started)
        return done

    def _restore(
        self, failed: list[dict[DeviceKey, PendingDevice]], uses: dict[str, float]
    ) -> None:
        batch = failed[0]
        for part in failed[1:]:
            batch.update(part)
        self._put_back(batch)
        for digest, used in uses.items():
            self.key_uses.setdefault(digest, used)
        metrics.ACTIVITY_PENDING.set(len(self._pending))

    async def run(self) -> None:
        """Flush until cancelled; back off while Postgres fails."""
        backoff = self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            try:
                while await self.flush_once() >= self._flush_max:
                    pass  # a full batch: more may be waiting, go again at once
            except Exception as exc:
                metrics.ACTIVITY_FLUSH_ERRORS.inc()
                metrics.STORE_UP.labels("postgres").set(0)
                if not isinstance(exc, _STORE_ERRORS):
                    # Not an outage: a bug. Keep the buffer and keep trying (a dead recorder
                    # would lose everything silently), but say so every time.
                    _log.exception("activity flush failed unexpectedly; retrying")
                elif self.last_flush_ok:
                    _log.warning(
                        "activity flush failed (%s); keeping %d devices and retrying",
                        _describe(exc),
                        self.pending,
                    )
                self.last_flush_ok = False
                backoff = min(max(backoff * 2, 0.1), self._retry_max)
                continue
            if not self.last_flush_ok:
                _log.info("activity flush recovered")
            self.last_flush_ok = True
            metrics.STORE_UP.labels("postgres").set(1)
            backoff = self._interval

    async def drain(self, deadline: float) -> bool:
        """Flush everything before shutdown, retrying until ``deadline`` (monotonic); what is
        still buffered then is counted as dropped."""
        while self._pending or self.key_uses:
            try:
                # A hung Postgres must not hold the shutdown past its deadline either.
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self.flush_once(everything=True)
            except _STORE_ERRORS as exc:
                if time.monotonic() >= deadline:
                    _log.error(
                        "shutdown: %d devices could not be flushed: %s",
                        self.pending,
                        _describe(exc),
                    )
                    self.dropped += self.pending
                    metrics.ACTIVITY_DROPPED.inc(self.pending)
                    return False
                await asyncio.sleep(0.2)
        return True
