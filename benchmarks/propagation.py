"""How fast a block and an unblock reach every worker of two gatekeeper proxy processes.

Two ``gatekeeper proxy --workers 2`` processes run against the same stores. Each trial blocks a
fresh device through the store (Postgres, then Redis and a publish) and times, from the call,
until *every* polling connection got its first ``403``; then the same for the unblock and the
first ``200``. The kernel spreads connections over the workers of a process (SO_REUSEPORT), so
:data:`CONNECTIONS_PER_PROXY` connections per process poll: the chance that one worker of a
process gets none of them is 2 x 2^-12 (about 0.05 %).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import uvloop

from .loadclient import Connection, open_connection, percentile, request_bytes
from .procs import HarnessError
from .progress import Progress
from .stack import GatekeeperStack

__all__ = ["CONNECTIONS_PER_PROXY", "estimate", "measure"]

CONNECTIONS_PER_PROXY = 12
WORKERS_PER_PROXY = 2
_TIMEOUT = 2.0  # a trial slower than this counts as a timeout
_PATH = "/api/bench/items"


def estimate(trials: int) -> float:
    """Planned seconds for the progress display."""
    return 10.0 + trials * 0.02


async def _first(conn: Connection, raw: bytes, want: int, started: float) -> float:
    """Poll on ``conn`` until the answer is ``want``; seconds from ``started`` to that answer."""
    deadline = started + _TIMEOUT
    while time.perf_counter() < deadline:
        if await conn.send(raw) == want:
            return time.perf_counter() - started
    raise TimeoutError


async def _until_everywhere(
    conns: list[Connection], raw: bytes, want: int, started: float
) -> float | None:
    """Milliseconds until every connection saw ``want``; None on timeout."""
    try:
        times = await asyncio.gather(*(_first(c, raw, want, started) for c in conns))
    except TimeoutError:
        return None
    return max(times) * 1000.0


async def _trials(stack: GatekeeperStack, ports: list[int], trials: int) -> dict[str, Any]:
    pool, redis = await stack.open_stores()
    conns = [await open_connection(port) for port in ports for _ in range(CONNECTIONS_PER_PROXY)]
    block_ms: list[float] = []
    unblock_ms: list[float] = []
    timeouts = 0
    try:
        for trial in range(trials):
            raw = request_bytes(_PATH, f"prop-{trial:05d}")
            # The device is seen (and allowed) everywhere before it is blocked.
            if await _until_everywhere(conns, raw, 200, time.perf_counter()) is None:
                raise HarnessError("the proxies do not answer 200 to an unblocked device")
            for blocked, want, sink in ((True, 403, block_ms), (False, 200, unblock_ms)):
                started = time.perf_counter()
                await stack.set_blocked(pool, redis, f"prop-{trial:05d}", blocked)
                took = await _until_everywhere(conns, raw, want, started)
                if took is None:
                    timeouts += 1
                else:
                    sink.append(took)
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        await redis.aclose()
        await pool.close()
    block_ms.sort()
    unblock_ms.sort()
    if not block_ms or not unblock_ms:
        raise HarnessError(f"no block or unblock propagated within {_TIMEOUT}s")
    return {
        "status": "ok",
        "trials": trials,
        "timeouts": timeouts,
        "proxies": len(ports),
        "workers_per_proxy": WORKERS_PER_PROXY,
        "connections_per_proxy": CONNECTIONS_PER_PROXY,
        "block_p50": round(percentile(block_ms, 50), 3),
        "block_p99": round(percentile(block_ms, 99), 3),
        "unblock_p50": round(percentile(unblock_ms, 50), 3),
        "unblock_p99": round(percentile(unblock_ms, 99), 3),
    }


def measure(
    stack: GatekeeperStack, upstream_port: int, prefix: list[str], trials: int, progress: Progress
) -> dict[str, Any]:
    """Start two proxies, run ``trials`` block/unblock trials, stop the proxies."""
    progress.step("propagation", f"starting 2 proxies x {WORKERS_PER_PROXY} workers")
    with contextlib.ExitStack() as running:
        ports: list[int] = []
        for index in range(2):
            child, port = stack.start_proxy(
                f"propagation-{index}", WORKERS_PER_PROXY, upstream_port, prefix
            )
            running.enter_context(child)
            ports.append(port)
        progress.step("propagation", f"{trials} block + unblock trials")
        result: dict[str, Any] = uvloop.run(_trials(stack, ports, trials))
    progress.consume(estimate(trials))
    return result
