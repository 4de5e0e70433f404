"""Many changes of the edge view announced as one: the Redis half of a bulk operation.

A single block is one ``SADD`` and one ``PUBLISH`` (:mod:`gatekeeper.store.edge_writes`); a bulk
block of 100,000 devices done that way is 100,000 messages to every subscriber. Here the changes
are written in pipelined chunks, each chunk a MULTI/EXEC that changes the view *and* appends the
chunk's events to a batch list (``{gk}:batch:<id>``); then one ``batch <key>`` event is published,
and every mirror reads the list and applies it (:mod:`gatekeeper.edge.blocklist`). The chunks
keep each Redis command small, so Redis never stalls its other clients on one huge command.

Postgres has committed before any of this runs (the caller's job); a Redis failure raises
:class:`~gatekeeper.store.edge_writes.EdgeSyncError`, and the reconcile repairs the view.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent
from gatekeeper.store.clients import REDIS_FAILURES, RedisClient, RedisPipeline
from gatekeeper.store.edge_writes import EdgeSyncError, publish

__all__ = ["CHUNK", "write_batch"]

# Events per MULTI/EXEC: a few hundred kilobytes, a few milliseconds of Redis time.
CHUNK: Final = 5_000


# What each event does to the sets: (set, add?) pairs. A device is in at most one of the blocked
# and shadow sets (see gatekeeper.store.edge_writes._stage_block).
_SET_CHANGES: Final[dict[str, tuple[tuple[str, bool], ...]]] = {
    "block": ((edgeview.BLOCKED_SET, True), (edgeview.SHADOW_SET, False)),
    "shadow": ((edgeview.SHADOW_SET, True), (edgeview.BLOCKED_SET, False)),
    "unblock": ((edgeview.BLOCKED_SET, False), (edgeview.SHADOW_SET, False)),
    "disable": ((edgeview.DISABLED_SET, True),),
    "enable": ((edgeview.DISABLED_SET, False),),
}


def _stage(pipe: RedisPipeline, events: Sequence[EdgeEvent]) -> None:
    """The view changes of ``events``, grouped per command (a batch never holds two events for
    one subject, so the grouping cannot reorder anything that matters)."""
    sets: dict[tuple[str, bool], list[str]] = {}
    revoked: list[str] = []
    for event in events:
        kind = event.kind
        if kind == "revoke":
            revoked.append(event.subject)
            continue
        if kind not in _SET_CHANGES:
            raise ValueError(f"a batch cannot carry a {kind!r} event")
        for target in _SET_CHANGES[kind]:
            sets.setdefault(target, []).append(event.subject)
    for (name, add), members in sets.items():
        (pipe.sadd if add else pipe.srem)(name, *members)
    if revoked:
        pipe.hdel(edgeview.KEYS_HASH, *revoked)


async def write_batch(redis: RedisClient, events: Sequence[EdgeEvent]) -> int:
    """Apply ``events`` to the edge view and announce them with one message; the number of
    chunks written. Nothing is published for no events."""
    if not events:
        return 0
    key = f"{edgeview.BATCH_PREFIX}{uuid.uuid4().hex}"
    chunks = 0
    try:
        for start in range(0, len(events), CHUNK):
            chunk = events[start : start + CHUNK]
            async with redis.pipeline(transaction=True) as pipe:
                _stage(pipe, chunk)
                pipe.rpush(key, *(edgeview.encode(e) for e in chunk))
                # Set with every chunk: a writer that dies half-way leaves nothing behind for long.
                pipe.expire(key, edgeview.BATCH_TTL_SECONDS)
                await pipe.execute()
            chunks += 1
        # Only now: a mirror that reads the batch finds it whole.
        await publish(redis, [EdgeEvent("batch", key)])
    except REDIS_FAILURES as exc:
        raise EdgeSyncError(str(exc)) from exc
    return chunks
