"""The soak's load client: paced mixed traffic, run in its own process by :mod:`benchmarks.soak`.

``python -m benchmarks.soakclient --port …`` (internal; the soak builds the command line) sends
paced mixed traffic to the proxy: a pool of devices plus new ones arriving, a few blocked ones,
keep-alive and one-request connections, some POST bodies, app upgrades. It prints its cumulative
counts as one JSON line a second, which the soak reads back with each sample.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random

import httptools
import uvloop

from .loadclient import Connection, device_id, open_connection
from .procs import HOST
from .stack import TENANT

__all__ = ["BLOCKED_EVERY", "PATH", "client_main"]

BLOCKED_EVERY = 250  # 0.4% of the pool is blocked for the whole run
PATH = f"/api/{TENANT}/soak"


class _Mix:
    """Which request comes next: the pool in a fixed shuffled order, new devices on a schedule.

    Each pool device comes once per pass over the pool, so the whole pool is seen within
    ``devices / rate`` seconds: memory that grows after that is not first sightings.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.devices = args.devices
        self.new_per_second = args.new_per_second
        self.post_share = args.post_share
        self.duration = args.duration
        self.new_sent = 0
        self.order = list(range(args.devices))
        random.Random(0).shuffle(self.order)
        self.served = 0

    def next(self, rng: random.Random, elapsed: float) -> tuple[bytes, bool]:
        """The request bytes and whether the device is one of the always-blocked ones."""
        if self.new_sent < elapsed * self.new_per_second:
            self.new_sent += 1
            device, index = f"soak-new-{self.new_sent:06d}", -1
        else:
            index = self.order[self.served % self.devices]
            self.served += 1
            device = device_id(index)
        # A quarter of the pool upgrades its app once, at a time spread over the run, so history
        # records keep being written; nobody downgrades (that would be churn, not a fleet).
        upgraded = index % 4 == 0 and (index * 7919 % 1000) / 1000 < elapsed / self.duration
        head = (
            f"X-Device-Id: {device}\r\nX-App-Name: soak-app\r\n"
            f"X-App-Version: {'1.1.0' if upgraded else '1.0.0'}\r\nX-OS-Name: Linux\r\n"
            f"X-OS-Version: 6.1\r\nX-Device-Manufacturer: Soak\r\nX-Device-Model: S-1\r\n"
        )
        if rng.random() < self.post_share:
            body = json.dumps({"readings": [rng.random() for _ in range(40)]}).encode()
            raw = (
                f"POST {PATH}/upload HTTP/1.1\r\nHost: {HOST}\r\n{head}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
        else:
            raw = (
                f"GET {PATH}/items?n={rng.randrange(100)} HTTP/1.1\r\nHost: {HOST}\r\n{head}\r\n"
            ).encode()
        return raw, index >= 0 and index % BLOCKED_EVERY == 0


def _bucket(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    return "denied" if status == 403 else f"status_{status}"


async def _lane(
    lane: int,
    fresh: bool,
    args: argparse.Namespace,
    mix: _Mix,
    counts: collections.Counter[str],
    started: float,
) -> None:
    """One connection slot on an absolute schedule; ``fresh`` opens a connection per request."""
    loop = asyncio.get_running_loop()
    rng = random.Random(lane)
    interval = args.connections / args.rate
    next_at = started + interval * lane / args.connections
    budget = int(args.rate * args.duration)
    conn: Connection | None = None
    while loop.time() < started + args.duration and counts["sent"] < budget:
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at += interval
        raw, blocked = mix.next(rng, loop.time() - started)
        counts["sent"] += 1
        if conn is not None and conn.closed.done():
            counts["server_closed"] += 1  # the proxy ended a keep-alive connection; reconnect
            conn = None
        try:
            if conn is None:
                conn = await open_connection(args.port)
                counts["connects"] += 1
            status = await asyncio.wait_for(conn.send(raw), 10.0)
        # RuntimeError: uvloop refuses a write on a transport the server closed meanwhile.
        except (OSError, RuntimeError, TimeoutError, httptools.HttpParserError):
            counts["errors"] += 1
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            conn = None
            continue
        counts[_bucket(status)] += 1
        counts["blocked_sent"] += blocked
        counts["blocked_forwarded"] += blocked and 200 <= status < 300
        if fresh and conn.transport is not None:
            conn.transport.close()
            conn = None
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def _client(args: argparse.Namespace) -> None:
    """Print cumulative counts as one JSON line a second; the last line has ``"done": true``."""
    loop = asyncio.get_running_loop()
    counts: collections.Counter[str] = collections.Counter()
    mix = _Mix(args)
    started = loop.time()
    keep = args.connections - args.fresh_connections
    lanes = [
        asyncio.create_task(_lane(i, i >= keep, args, mix, counts, started))
        for i in range(args.connections)
    ]
    waiter = asyncio.gather(*lanes)
    while not waiter.done():
        await asyncio.wait([waiter], timeout=1.0)
        line = {"t": round(loop.time() - started, 2), "new_devices": mix.new_sent, **counts}
        print(json.dumps(line | {"done": waiter.done()}), flush=True)
    waiter.result()


def client_main() -> None:
    parser = argparse.ArgumentParser(description="the soak's load client (internal)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--new-per-second", type=float, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--fresh-connections", type=int, required=True)
    parser.add_argument("--post-share", type=float, required=True)
    uvloop.run(_client(parser.parse_args()))


if __name__ == "__main__":
    client_main()
