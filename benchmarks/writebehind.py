"""The activity recorder's write-behind: how many devices per second it can flush into Postgres,
and how many rows 1,000 requests of one device cost.

* ``devices_per_s``: the recorder is driven directly (no proxy in the way), every flush carrying
  distinct, never-seen devices (so each one is an insert plus its first history record), for a
  fixed time; flushed devices divided by the wall time.
* ``touches_per_s``: N known devices (written by a first flush), each touched once (the same
  attributes, no upload) and flushed, in rounds for a fixed time; touched devices flushed per
  second of flushing. A touch is an update of the device's ``device_activity`` row (its times),
  after comparing the attributes with the row as locked, in one statement per 250 devices.
* ``rows_per_1000_requests``: 1,000 requests of one new device go through a one-worker gatekeeper
  proxy; the proxy is stopped (it flushes on shutdown and its connections end, which makes
  PostgreSQL publish their statistics) and the rows written are the change of
  ``n_tup_ins + n_tup_upd`` over all tables in ``pg_stat_user_tables``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop

from . import recorder_adapter
from .loadclient import open_connection, request_bytes
from .progress import Progress
from .stack import GatekeeperStack

__all__ = ["estimate", "measure"]

_ROWS_SQL = "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)::bigint FROM pg_stat_user_tables"


def estimate(seconds: float) -> float:
    """Planned seconds for the progress display."""
    return 2 * seconds + 10.0


async def _rows_written(dsn: str) -> int:
    """Rows inserted or updated so far, once the statistics stopped moving (at most ~3 s)."""
    from gatekeeper.store.clients import open_pg_pool

    conn = await open_pg_pool(dsn, min_size=1, max_size=1)  # one connection, one snapshot
    try:
        last = -1
        for _ in range(15):
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            now = int(await conn.fetchval(_ROWS_SQL))
            if now == last:
                return now
            last = now
            await asyncio.sleep(0.2)
        return last
    finally:
        await conn.close()


async def _one_device(port: int, requests: int) -> None:
    conn = await open_connection(port)
    raw = request_bytes("/api/bench/items", "writebehind-one")
    try:
        for _ in range(requests):
            await conn.send(raw)
    finally:
        if conn.transport is not None:
            conn.transport.close()


_TOUCH_DEVICES = 20_000
_TOUCH_BATCH = 5_000


async def touch_rate(dsn: str, seconds: float) -> dict[str, Any]:
    """Known devices touched once each and flushed, in rounds; touches per second of flushing."""
    from gatekeeper.edge.activity.recorder import ActivityRecorder
    from gatekeeper.store.clients import open_pg_pool

    from .recorder_adapter import sink_for

    pool = await open_pg_pool(dsn, min_size=1, max_size=4)
    attributes = ("bench-app", "1.0.0", "Linux", "6.1", "Bench", "B-1")
    keys = [("bench-touch", f"touch-{i:06d}") for i in range(_TOUCH_DEVICES)]
    try:
        recorder = ActivityRecorder(
            sink_for(pool),
            flush_interval=0.25,
            flush_max_devices=_TOUCH_BATCH,
            max_pending=2 * _TOUCH_DEVICES,
            retry_max_seconds=1.0,
        )
        for key in keys:
            recorder.record(key, attributes, False)
        while recorder.pending:
            await recorder.flush_once(everything=True)
        touched = 0
        rounds = 0
        flush_s = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for key in keys:
                recorder.record(key, attributes, False)
            started = time.perf_counter()
            while recorder.pending:
                touched += await recorder.flush_once(everything=True)
            flush_s += time.perf_counter() - started
            rounds += 1
    finally:
        await pool.close()
    return {
        "touches_per_s": round(touched / flush_s, 1) if flush_s else None,
        "touches_flushed": touched,
        "touch_rounds": rounds,
        "touch_devices": _TOUCH_DEVICES,
        "touch_s": round(flush_s, 3),
    }


def rows_per_1000(stack: GatekeeperStack, upstream_port: int) -> float:
    """Rows written for 1,000 requests of one device through a one-worker proxy."""
    before = uvloop.run(_rows_written(stack.database_url))
    child, port = stack.start_proxy("writebehind-proxy", 1, upstream_port, [])
    with child:
        uvloop.run(_one_device(port, 1000))
        time.sleep(0.6)  # a couple of flush intervals
    after = uvloop.run(_rows_written(stack.database_url))
    return float(after - before)


def measure(
    stack: GatekeeperStack, upstream_port: int, seconds: float, progress: Progress
) -> dict[str, Any]:
    """Both write-behind figures; a part that cannot run is reported with its reason."""
    result: dict[str, Any] = {
        "status": "ok",
        "devices_per_s": None,
        "touches_per_s": None,
        "rows_per_1000_requests": None,
    }
    progress.step("writebehind", f"recorder flush rate ({seconds:g}s, distinct devices)")
    reason = recorder_adapter.unavailable()
    if reason is None:
        try:
            result.update(uvloop.run(recorder_adapter.flush_rate(stack.database_url, seconds)))
        except Exception as exc:  # the recorder's interface may differ from the adapter's
            reason = f"failed: {type(exc).__name__}: {exc}"
    if reason is not None:
        result["devices_per_s_skipped"] = reason
        progress.say(f"writebehind: devices/s skipped ({reason})")
    progress.step("writebehind", f"known-device touches ({seconds:g}s)")
    try:
        result.update(uvloop.run(touch_rate(stack.database_url, seconds)))
    except Exception as exc:
        result["touches_per_s_skipped"] = f"failed: {type(exc).__name__}: {exc}"
    progress.step("writebehind", "1,000 requests of one device through a proxy")
    result["rows_per_1000_requests"] = rows_per_1000(stack, upstream_port)
    progress.consume(estimate(seconds))
    return result
