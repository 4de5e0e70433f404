"""Opening the two stores the same way everywhere: an asyncpg pool and a redis-py client (one
server, a cluster or a Sentinel-watched primary, as ``redis_url`` says:
:mod:`gatekeeper.redis_url`); and the one-line error a command stops with when a store it needs
cannot be reached at start."""

from __future__ import annotations

import socket
from typing import Any, TypeAlias

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from gatekeeper.redis_url import RedisTarget, parse_redis_url
from gatekeeper.settings import mask_url

__all__ = [
    "CONNECT_ERRORS",
    "POSTGRES_FAILURES",
    "REDIS_FAILURES",
    "RedisClient",
    "RedisPipeline",
    "StoreUnavailable",
    "describe_failure",
    "is_cluster",
    "open_pg_pool",
    "open_redis",
]

# What open_redis returns. A Sentinel-watched primary is a plain client whose pool asks the
# sentinels where the primary is; a cluster is a client of its own kind, routing by key slot.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster
RedisPipeline: TypeAlias = Pipeline | ClusterPipeline

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
    # A cluster none of whose seed nodes answers (redis-py's cluster errors are not RedisErrors).
    RedisClusterException,
)


# What a Redis command raises when the server cannot be reached or the connection breaks: the
# one place where "Redis is down" is defined for every caller. RuntimeError is in it because
# uvloop raises "unable to perform operation on <TCPTransport closed=True>; the handler is
# closed" when a command is written to a connection the server has reset (asyncio's own loop
# drops the write silently); redis-py turns only OSError into ConnectionError and lets the
# RuntimeError through, after dropping the connection, so the next command reconnects.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, RuntimeError)
# Likewise for Postgres: a server error, a connection that closed under a statement or a pool
# closed under a caller (asyncpg's InterfaceError, not a PostgresError), or the network.
POSTGRES_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


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


def is_cluster(redis: RedisClient) -> bool:
    """Whether ``redis`` routes by key slot: its writers publish with SPUBLISH and its readers
    subscribe with SSUBSCRIBE (sharded pub/sub, docs/decisions.md "Redis Cluster and
    Sentinel")."""
    return isinstance(redis, RedisCluster)


def _options() -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "health_check_interval": 10,
        # RESP2, whatever the library's default (redis-py 8 moved to RESP3): in RESP3 a PING on
        # a subscribed connection is answered as a plain string, which redis-py's pub/sub
        # parser drops, so the mirror would never see the PONG that proves it is alive.
        "protocol": 2,
        # One immediate retry on a broken connection: after a restart or a dropped idle
        # connection, a pooled connection fails once and is replaced instead of failing the
        # command. Timeouts are not retried (they would double).
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }


class _SentinelManaged(aioredis.Redis):
    """The primary's client, which also closes the sentinels' connections when closed."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


def _open_sentinel(target: RedisTarget) -> aioredis.Redis:
    options = _options()
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes),
        # The sentinels are asked without the servers' credentials (gatekeeper.redis_url).
        sentinel_kwargs={
            "socket_connect_timeout": options["socket_connect_timeout"],
            "socket_timeout": options["socket_timeout"],
            "ssl": target.tls,
            "protocol": 2,
        },
    )
    client: _SentinelManaged = sentinel.master_for(
        target.service,
        redis_class=_SentinelManaged,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        **options,
    )
    client.sentinel_manager = sentinel
    return client


def _open_cluster(target: RedisTarget) -> RedisCluster:
    options = _options()
    # The cluster client retries by itself, refreshing its slot map on a MOVED or a dead node
    # (redis-py's default: three attempts with a jittered backoff), which is what carries a
    # write through a failover; the single server's one-retry policy would stop it early.
    del options["retry"]
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        **options,
    )


def open_redis(url: str) -> RedisClient:
    """A client with short timeouts: the edge must notice an outage quickly, not hang on it.
    ``url`` has been checked by the settings; a malformed one raises
    :class:`~gatekeeper.settings.SettingsError` here too."""
    target = parse_redis_url(url)
    if target.topology == "cluster":
        return _open_cluster(target)
    if target.topology == "sentinel":
        return _open_sentinel(target)
    client: aioredis.Redis = aioredis.from_url(url, **_options())
    return client
