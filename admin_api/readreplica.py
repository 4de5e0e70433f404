"""Where the device list and its CSV export read: a read-only replica when
``database_read_url`` is set, else the primary.

Only those two read there: they are the admin's large reads (an export walks every device of a
tenant), and a list may lag the primary by the replication delay without surprising anyone.
Everything else, writes and the reads that must see a write just made (``GET`` of one device
after a ``PATCH``), stays on the primary.

When the replica is unreachable the list answers ``503`` (problem+json, ``Retry-After``) with a
detail that names the replica; it does not fall back to the primary, which the replica is there
to spare (docs/decisions.md, "Capacity model, read replica, balancing").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

import asyncpg
from aiohttp import web

from admin_api.errors import STORE_UNAVAILABLE, Problem

__all__ = ["READ_POOL", "ReadPool", "replica_errors"]

_RETRY_AFTER_SECONDS: Final = 5
REPLICA_DOWN: Final = (
    "The read replica (database_read_url) is unavailable. The device list and export read from"
    " it; device changes and single devices are served by the primary. Retry later."
)


class ReadPool:
    """The pool the list reads from, and whether it is a replica (not the primary)."""

    __slots__ = ("pool", "replica")

    def __init__(self, pool: asyncpg.Pool, *, replica: bool) -> None:
        self.pool = pool
        self.replica = replica


@contextlib.contextmanager
def replica_errors(read: ReadPool) -> Iterator[None]:
    """Answer a replica that cannot be reached with a 503 that says so; an unreachable primary
    is left to the error middleware's own 503."""
    try:
        yield
    except STORE_UNAVAILABLE as exc:
        if not read.replica:
            raise
        raise Problem(
            503,
            REPLICA_DOWN,
            title="Read replica unavailable",
            type_="read-replica-unavailable",
            headers={"Retry-After": str(_RETRY_AFTER_SECONDS)},
        ) from exc


READ_POOL = web.AppKey("read_pool", ReadPool)
