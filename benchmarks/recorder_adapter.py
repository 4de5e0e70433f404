"""Driving ``gatekeeper.edge.activity.recorder`` directly, for the write-behind flush rate.

Kept apart from :mod:`benchmarks.writebehind` because it is the one place that knows the
recorder's interface: when that interface changes, only this file changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from typing import Any

__all__ = ["flush_rate", "sink_for", "unavailable"]

_BATCH = 5_000  # devices per flush: the recorder's default flush_max_devices


def sink_for(pool: Any) -> Any:
    """What the recorder writes through: a ``PostgresWriter`` since the recorder process
    (issue 10); builds before it took the pool itself (to benchmark them side by side)."""
    if importlib.util.find_spec("gatekeeper.edge.activity.writer") is None:
        return pool
    return importlib.import_module("gatekeeper.edge.activity.writer").PostgresWriter(pool)


def unavailable() -> str | None:
    """None when the recorder can be driven, else why not."""
    if importlib.util.find_spec("gatekeeper.edge.activity.recorder") is None:
        return "gatekeeper.edge.activity.recorder not available yet"
    module = importlib.import_module("gatekeeper.edge.activity.recorder")
    if not hasattr(module, "ActivityRecorder"):
        return "gatekeeper.edge.activity.recorder has no ActivityRecorder"
    return None


async def flush_rate(dsn: str, seconds: float) -> dict[str, Any]:
    """Record batches of distinct new devices and flush each; devices flushed per second.

    The wall time covers recording and flushing, as in the proxy (where recording is spread
    over requests instead); ``flush_s`` is the part spent in the flushes alone.
    """
    from gatekeeper.store.clients import open_pg_pool

    module: Any = importlib.import_module("gatekeeper.edge.activity.recorder")
    pool = await open_pg_pool(dsn, min_size=1, max_size=4)
    try:
        recorder = module.ActivityRecorder(
            sink_for(pool),
            flush_interval=0.25,
            flush_max_devices=_BATCH,
            max_pending=4 * _BATCH,
            retry_max_seconds=1.0,
        )
        flushed = 0
        batch = 0
        flush_s = 0.0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for i in range(_BATCH):
                recorder.record(("bench-wb", f"wb-{batch:05d}-{i:05d}"), _attributes(i), False)
            flush_started = time.perf_counter()
            flushed += await recorder.flush_once()
            flush_s += time.perf_counter() - flush_started
            batch += 1
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return {
        "devices_per_s": round(flushed / elapsed, 1),
        "devices_flushed": flushed,
        "flushes": batch,
        "devices_per_flush": _BATCH,
        "flush_s": round(flush_s, 3),
        "flush_devices_per_s": round(flushed / flush_s, 1) if flush_s else None,
        "history": "first sighting of every device writes a history record",
    }


def _attributes(i: int) -> tuple[str | None, ...]:
    return ("bench-app", f"1.{i % 7}.0", "Linux", "6.1", "Bench", "B-1")
