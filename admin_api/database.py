"""The admin API's Postgres pool: every wait on the database has a short bound.

An admin call is a person (or a script) waiting for an answer. When Postgres is down the pool
refuses at once; when it is hung (a stopped process, a dead network path) nothing refuses and
asyncpg's defaults would wait for 30 s and more. Here every wait is bounded, and the error
middleware answers the resulting timeout or connection error with ``503`` and ``Retry-After``.

Worst case for one request against a hung server: :data:`STATEMENT_TIMEOUT` for the statement,
then at most :data:`ACQUIRE_TIMEOUT` for asyncpg to give up cancelling it and drop the
connection (the release of a connection is bounded by the acquire timeout).
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolAcquireContext

__all__ = ["ACQUIRE_TIMEOUT", "CONNECT_TIMEOUT", "STATEMENT_TIMEOUT", "open_admin_pool"]

# Opening a connection: a healthy local or regional Postgres answers in milliseconds.
CONNECT_TIMEOUT: Final = 2.0
# Waiting for a pooled connection, and for one to be cleaned up on release. A queue this long
# means the pool is exhausted by slow statements: answering 503 beats queueing ever more callers.
ACQUIRE_TIMEOUT: Final = 2.0
# One statement. Admin statements are index look-ups and keyset pages of at most 1,000 rows; the
# largest, the reconciler's full scans, take well under a second at a million devices.
STATEMENT_TIMEOUT: Final = 5.0


class _BoundedPool(asyncpg.Pool):
    """A pool whose ``acquire()`` (used by ``fetch``/``execute`` and by the store) is bounded.

    asyncpg applies an acquire's timeout to the matching release too, so a connection whose
    statement timed out is dropped after that long instead of waiting for a cancel request that
    a hung server never answers."""

    __slots__ = ()

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext[Any]:
        return super().acquire(timeout=ACQUIRE_TIMEOUT if timeout is None else timeout)


async def open_admin_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """The admin's pool; the caller closes it."""
    pool = _BoundedPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        # Idle connections are closed, so a restarted server is reconnected to.
        max_inactive_connection_lifetime=60.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=CONNECT_TIMEOUT,
        command_timeout=STATEMENT_TIMEOUT,
    )
    await pool
    return pool
