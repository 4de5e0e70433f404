"""Device activity: coalesced in memory per request, handed over in batches to be written.

:meth:`ActivityRecorder.record` runs on the proxy's hot path: a dict look-up and a few stores, no
I/O. A background task (:meth:`ActivityRecorder.run`) hands a batch to its sink every
``flush_interval`` (on the wall clock's multiples of it, so the workers of a node hand over
together and the recorder process merges their sightings in request-time order) or as soon as
``flush_max_devices`` devices are pending. The sink is the node's recorder process
(:class:`~gatekeeper.edge.activity.channel.RecorderLink`), or a
:class:`~gatekeeper.edge.activity.writer.PostgresWriter` in this process. A device seen 1,000
times between flushes is one entry. Attribute changes seen in between are kept in order, each
with the time its request was seen, so history is exact. When the sink fails, the taken batch is
merged back and retried with backoff; the buffer is bounded, and a device that does not fit is
dropped and counted. A device counts as flushed only once the sink says it is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Mapping
from typing import Protocol

import asyncpg

from gatekeeper.domain.identity import Attributes
from gatekeeper.edge import metrics
from gatekeeper.edge.activity.channel import RecorderRefused, RecorderUnavailable
from gatekeeper.edge.activity.pending import PendingDevice, merge_attributes
from gatekeeper.types import SYSTEM_CLOCK, Clock, DeviceKey

__all__ = ["ActivityRecorder", "BatchSink", "PendingDevice"]

_log = logging.getLogger(__name__)

_STORE_ERRORS = (
    asyncpg.PostgresError,
    OSError,
    asyncpg.InterfaceError,
    TimeoutError,
    RecorderRefused,
)
# The recorder process restarts within about a second (its supervisor's first backoff): retrying
# sooner than ``flush_retry_max_seconds`` gets the buffer out as soon as it is back.
_RECORDER_RETRY_MAX_SECONDS = 1.0
# An idle worker hands over an empty batch this often (see flush_once).
_KEEPALIVE_SECONDS = 1.0


class BatchSink(Protocol):
    async def write(
        self, batch: Mapping[DeviceKey, PendingDevice], key_uses: Mapping[str, float]
    ) -> None:
        """Return once all of ``batch`` is committed; raise otherwise."""


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # a timeout's message is empty


class ActivityRecorder:
    __slots__ = (
        "_clock",
        "_due",
        "_flush_max",
        "_handed_over",
        "_interval",
        "_known",
        "_later",
        "_max_pending",
        "_order",
        "_pending",
        "_retry_max",
        "_sink",
        "_touch",
        "_wake",
        "dropped",
        "flushed_rows",
        "key_uses",
        "last_flush_ok",
    )

    def __init__(
        self,
        sink: BatchSink,
        *,
        flush_interval: float,
        flush_max_devices: int,
        max_pending: int,
        retry_max_seconds: float,
        touch_interval: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._sink = sink
        # What a request is stamped with and when a touch is due; the flush loop's own waits
        # (interval, backoff) and the shutdown deadline stay on the event loop's clock.
        self._clock = clock
        # Devices this process has handed over, with when (monotonic): a device that only "was
        # active again" is handed over at most every ``touch_interval``. Bounded by the buffer
        # size; when full it starts over.
        self._known: dict[DeviceKey, tuple[float, Attributes]] = {}
        self._touch = touch_interval
        self._interval = flush_interval
        self._flush_max = flush_max_devices
        self._max_pending = max_pending
        self._retry_max = retry_max_seconds
        self._pending: dict[DeviceKey, PendingDevice] = {}
        # Pending devices to hand over at the next tick (insertion-ordered), and deferred
        # touches: (due at, tie-breaker, key, entry), a heap by due time.
        self._due: dict[DeviceKey, PendingDevice] = {}
        self._later: list[tuple[float, int, DeviceKey, PendingDevice]] = []
        self._order = itertools.count()
        self._handed_over = 0.0  # monotonic time of the last successful hand-over
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
            entry = pending[key] = PendingDevice(attributes, now, is_post, news)
            if news or written is None or self._touch <= 0:
                self._make_due(key, entry)
            else:
                # Only "active again": due when its last hand-over is a touch interval old.
                heapq.heappush(
                    self._later, (written[0] + self._touch, next(self._order), key, entry)
                )
            return
        entry.last_active = now
        if is_post:
            entry.last_upload = now
            if not entry.news:
                entry.news = True
                self._make_due(key, entry)
        if attributes != entry.attributes:
            merged = merge_attributes(attributes, entry.attributes)
            if merged != entry.attributes:
                entry.attributes = merged
                entry.changes.append((now, merged))
                if not entry.news:
                    entry.news = True
                    self._make_due(key, entry)

    def _make_due(self, key: DeviceKey, entry: PendingDevice) -> None:
        due = self._due
        due[key] = entry
        if len(due) == self._flush_max:
            self._wake.set()  # a batch's worth: no need to wait for the tick

    def note_key_use(self, digest: str) -> None:
        self.key_uses[digest] = self._clock.wall()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _take(self, everything: bool = False) -> dict[DeviceKey, PendingDevice]:
        """The next batch: every device with news, and those only "active again" whose last
        hand-over is older than the touch interval (all of them when ``everything``).

        Costs what the batch holds, not what the buffer holds: devices are made due as their
        news arrives, and deferred touches wait in a heap ordered by when they come due. An
        entry in either that is no longer the device's pending entry (taken, merged back) is
        skipped."""
        pending = self._pending
        if everything:
            if len(pending) <= self._flush_max:
                self._pending = {}
                self._due = {}
                self._later = []
                return pending
            keys = list(itertools.islice(pending, self._flush_max))
            return {key: pending.pop(key) for key in keys}
        later, due = self._later, self._due
        now = self._clock.monotonic()
        while later and later[0][0] <= now:
            _, _, key, entry = heapq.heappop(later)
            if pending.get(key) is entry:
                due[key] = entry
        if len(due) <= self._flush_max:
            chosen = list(due.items())
            self._due = {}
        else:
            chosen = list(itertools.islice(due.items(), self._flush_max))
            for key, _ in chosen:
                del due[key]
        batch = {}
        for key, entry in chosen:
            if pending.get(key) is entry:
                batch[key] = pending.pop(key)
        return batch

    def _put_back(self, batch: dict[DeviceKey, PendingDevice]) -> None:
        """Return a failed batch: older than whatever arrived meanwhile, so it goes first; all
        of it is due again (what arrived meanwhile keeps its place)."""
        newer = self._pending
        self._pending = batch
        due = dict(batch)
        for key, entry in self._due.items():
            due.setdefault(key, entry)  # a device of the batch keeps the batch's entry
        self._due = due
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

    async def flush_once(self, everything: bool = False) -> int:
        """Hand one batch to the sink; returns the devices written. Raises on a failure, with
        the batch back in the buffer (older than what arrived meanwhile)."""
        batch = self._take(everything)
        uses, self.key_uses = self.key_uses, {}
        if len(self._known) > self._max_pending:
            self._known.clear()
        metrics.ACTIVITY_PENDING.set(len(self._pending))
        if not batch and not uses and time.monotonic() - self._handed_over < _KEEPALIVE_SECONDS:
            return 0
        # Even with nothing to send, a hand-over now and then: an idle worker still learns (and
        # reports) whether its recorder answers.
        try:
            await self._sink.write(batch, uses)
        except BaseException:
            self._restore(batch, uses)
            raise
        self._handed_over = time.monotonic()
        # Committed. Stamp each device a random part of the touch interval early, so devices
        # first written together do not all come due together: touches spread over the flushes
        # instead of arriving as one large batch every interval.
        now = self._clock.monotonic()
        spread = self._touch / 2
        self._known.update(
            {
                key: (now - spread * random.random(), entry.attributes)
                for key, entry in batch.items()
            }
        )
        self.flushed_rows += len(batch)
        return len(batch)

    def _restore(self, batch: dict[DeviceKey, PendingDevice], uses: dict[str, float]) -> None:
        self._put_back(batch)
        for digest, used in uses.items():
            self.key_uses.setdefault(digest, used)
        metrics.ACTIVITY_PENDING.set(len(self._pending))

    def _until_next_tick(self) -> float:
        """Seconds to the next multiple of ``flush_interval`` on the wall clock: every worker of
        the node hands over at the same instants, so the recorder process gets a tick's
        batches together and merges them in request-time order (see docs/decisions.md)."""
        return self._interval - time.time() % self._interval

    async def run(self) -> None:
        """Flush until cancelled; back off while the sink fails."""
        backoff = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff or self._until_next_tick())
            self._wake.clear()
            try:
                while await self.flush_once() >= self._flush_max:
                    pass  # a full batch: more may be waiting, go again at once
            except Exception as exc:
                metrics.ACTIVITY_FLUSH_ERRORS.inc()
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
                ceiling = self._retry_max
                if isinstance(exc, RecorderUnavailable):
                    ceiling = min(ceiling, _RECORDER_RETRY_MAX_SECONDS)
                backoff = min(max(backoff * 2, 0.1), ceiling)
                continue
            if not self.last_flush_ok:
                _log.info("activity flush recovered")
            self.last_flush_ok = True
            backoff = 0.0

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
