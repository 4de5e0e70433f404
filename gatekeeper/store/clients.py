"""Opening the two stores the same way everywhere: an asyncpg pool and a redis-py client."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["open_pg_pool", "open_redis"]


async def open_pg_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections fail fast instead of hanging when Postgres is gone."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=5.0,
        command_timeout=30.0,
        # Connections idle this long are closed, so a restarted server is reconnected to.
        max_inactive_connection_lifetime=60.0,
    )
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
