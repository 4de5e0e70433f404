"""The worker's activity buffer alone, with a sink that records what it is handed: what a flush
hands over, and when (no Postgres: the buffer's own rules)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from gatekeeper.edge.activity.recorder import ActivityRecorder, PendingDevice
from gatekeeper.types import DeviceKey, ManualClock

ATTRS = ("App", "1.0", "Android", "14", "Acme", "X1")


class _Sink:
    """Records what it is handed; fails while ``failing``."""

    def __init__(self) -> None:
        self.batches: list[set[str]] = []
        self.failing = False

    async def write(self, batch: Mapping[DeviceKey, PendingDevice], _uses: object) -> None:
        if self.failing:
            raise OSError("recorder away")
        self.batches.append({key[1] for key in batch})


async def test_deferred_touches_come_due_in_time_and_failed_batches_go_first() -> None:
    """What a flush hands over: news at once, a pure touch once its interval has passed, and a
    batch that failed ahead of everything else, without its device being handed over twice."""
    clock = ManualClock()
    sink = _Sink()
    rec = ActivityRecorder(
        sink,
        flush_interval=3600.0,
        flush_max_devices=5_000,
        max_pending=100,
        retry_max_seconds=1.0,
        touch_interval=60.0,
        clock=clock,
    )
    rec.record(("t", "quiet"), ATTRS, False)
    assert await rec.flush_once() == 1
    clock.advance(1.0)
    rec.record(("t", "quiet"), ATTRS, False)  # only active again: deferred
    rec.record(("t", "new"), ATTRS, False)
    sink.failing = True
    with pytest.raises(OSError):
        await rec.flush_once()
    rec.record(("t", "new"), ATTRS, True)  # more news for the device whose batch failed
    rec.record(("t", "other"), ATTRS, False)
    sink.failing = False
    assert await rec.flush_once() == 2
    assert sink.batches[-1] == {"new", "other"}
    assert await rec.flush_once() == 0  # "quiet" is not due yet
    clock.advance(60.0)
    assert await rec.flush_once() == 1
    assert sink.batches[-1] == {"quiet"}
    assert rec.pending == 0
