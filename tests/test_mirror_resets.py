"""The blocklist mirror on uvloop, the loop production runs, through connection resets.

Found in a Sentinel failover test: when the server resets a connection, uvloop closes the
transport at once, and the next command redis-py writes to it raises ``RuntimeError("unable to
perform operation on <TCPTransport closed=True>; the handler is closed")``, which redis-py lets
through (it turns only OSError into ConnectionError). The mirror's loop caught Redis errors only,
so the task ended; the worker kept serving its last sets and forwarded every device blocked
after that, until it was restarted. These tests run their own uvloop loop (the suite's async
tests run on asyncio's) against the real Redis, behind a relay that resets connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import uvloop
from conftest import Stores
from faultproxy import FaultProxy

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent
from gatekeeper.edge.blocklist import BlocklistMirror
from gatekeeper.store.clients import REDIS_FAILURES, open_redis
from gatekeeper.store.edge_writes import publish


def _on_uvloop(main: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 60))


def _proxy_to(stores: Stores) -> FaultProxy:
    target = urlsplit(stores.redis_url)
    assert target.hostname is not None and target.port is not None
    return FaultProxy(target.hostname, target.port)


def test_a_command_written_to_a_reset_connection_is_a_redis_failure(stores: Stores) -> None:
    """The error the mirror's loop met, reproduced: a PING on a subscription whose connection
    the server reset. Whatever uvloop raises for it, the callers' one definition of "Redis is
    down" (``REDIS_FAILURES``) includes it."""

    async def main() -> None:
        async with _proxy_to(stores) as proxy:
            redis = open_redis(f"redis://127.0.0.1:{proxy.port}")
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(edgeview.CHANNEL)
                assert await pubsub.get_message(timeout=1.0) is not None  # the confirmation
                await proxy.reset(hard=True)
                await asyncio.sleep(0.1)  # the reset has reached the client's transport
                try:
                    await pubsub.ping()
                except Exception as exc:  # the point is which class it is
                    assert isinstance(exc, REDIS_FAILURES), repr(exc)
                else:
                    raise AssertionError("a write to a reset connection succeeded")
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await redis.aclose()

    _on_uvloop(main)


def test_the_mirror_keeps_following_through_resets(stores: Stores, tenant: str) -> None:
    """Forty hard resets at random moments while the mirror PINGs back to back, each followed
    by a block published on a client that is not reset: the mirror is still running at the
    end and denies every device. Before the fix the task ended on the first reset that hit a
    write (most runs within the first few), and later blocks were never applied."""
    rng = random.Random(15)  # the moments vary between resets, not between runs

    async def main() -> None:
        writer = open_redis(stores.redis_url)
        async with _proxy_to(stores) as proxy:
            reader = open_redis(f"redis://127.0.0.1:{proxy.port}")
            mirror = BlocklistMirror(reader, resync_seconds=600.0, ping_interval=0.0)
            task = asyncio.create_task(mirror.run())
            members = [edgeview.member(tenant, f"d{i}") for i in range(40)]
            try:
                while not mirror.loaded:
                    await asyncio.sleep(0.005)
                for member in members:
                    await proxy.reset(hard=True)
                    await asyncio.sleep(rng.uniform(0.0, 0.03))
                    await writer.sadd(edgeview.BLOCKED_SET, member)
                    await publish(writer, [EdgeEvent("block", member)])
                    assert not task.done(), f"the mirror's task ended: {task.exception()!r}"

                async def all_denied() -> bool:
                    return all(
                        mirror.denial(edgeview.split_member(member)) == "blocked"
                        for member in members
                    )

                for _ in range(200):  # 10 s at most: a reconnect backs off 2 s at the longest
                    if await all_denied():
                        break
                    await asyncio.sleep(0.05)
                assert not task.done(), f"the mirror's task ended: {task.exception()!r}"
                assert await all_denied(), "blocks made after the resets were not applied"
            finally:
                task.cancel()
                # Ended by the cancellation, or (the failure this test is for) by an error.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                await writer.srem(edgeview.BLOCKED_SET, *members)
                await reader.aclose()
                await writer.aclose()

    _on_uvloop(main)
