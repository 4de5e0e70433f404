"""Opening the two stores the same way everywhere: an asyncpg pool and a redis-py client; and
the one-line error a command stops with when a store it needs cannot be reached at start."""

from __future__ import annotations

import socket

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gatekeeper.settings import mask_url

__all__ = [
    "CONNECT_ERRORS",
    "StoreUnavailable",
    "describe_failure",
    "open_pg_pool",
    "open_redis",
]

# What connecting to a store raises when the address, the credentials or the server is wrong
# (asyncpg raises ValueError for a malformed URL, redis-py for an unknown scheme).
CONNECT_ERRORS = (
    OSError,
    OverflowError,
    TimeoutError,
    ValueError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RedisError,
)


class StoreUnavailable(Exception):
    """A store a command needs could not be reached: the setting, where it points (never the
    password) and why, as one line an operator can act on."""

    def __init__(self, setting: str, url: str, cause: BaseException) -> None:
        super().__init__(f"{setting} {mask_url(url)}: {describe_failure(cause)}")
        self.setting = setting


def describe_failure(exc: BaseException) -> str:
    """A connection failure in a few words (the server's own message where it sent one)."""
    if isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    if "Connect call failed" in message or "Connection refused" in message:
        return "connection refused"
    return message


async def open_pg_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections fail fast instead of hanging when Postgres is gone. Raises
    :class:`StoreUnavailable` when its first ``min_size`` connections cannot be made."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=5.0,
            command_timeout=30.0,
            # Connections idle this long are closed, so a restarted server is reconnected to.
            max_inactive_connection_lifetime=60.0,
        )
    except CONNECT_ERRORS as exc:
        raise StoreUnavailable("database_url", dsn, exc) from exc
    return pool


def open_redis(url: str) -> aioredis.Redis:
    """A client with short timeouts: the edge must notice an outage quickly, not hang on it.

    One immediate retry on a broken connection: after a Redis restart or a dropped idle
    connection, a pooled connection fails once and is replaced instead of failing the command.
    Timeouts are not retried (they would double)."""
    client: aioredis.Redis = aioredis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=10,
        # RESP2, whatever the library's default (redis-py 8 moved to RESP3): in RESP3 a PING on
        # a subscribed connection is answered as a plain string, which redis-py's pub/sub
        # parser drops, so the mirror would never see the PONG that proves it is alive.
        protocol=2,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return client
