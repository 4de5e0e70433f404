"""Shared fixtures: real PostgreSQL and Valkey servers from the pip wheels, on loopback.

One pair of servers serves the whole session; each test gets a tenant of its own, so tests never
see each other's devices. Tests that stop a server (outage tests) take a private pair from
``private_stores`` instead, so the shared pair stays up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from gatekeeper.connections import open_pg_pool, open_redis
from gatekeeper.embedded import EmbeddedPostgres, EmbeddedRedis
from gatekeeper.migrate import migrate


@dataclass
class Stores:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis

    @property
    def pg_url(self) -> str:
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def stop(self) -> None:
        self.postgres.stop()
        self.redis.stop()


def _start_stores(folder: Path) -> Stores:
    postgres = EmbeddedPostgres(folder / "pg")
    redis = EmbeddedRedis(folder / "redis")
    postgres.start()
    redis.start()
    asyncio.run(migrate(postgres.url))
    return Stores(postgres, redis)


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    pair = _start_stores(tmp_path_factory.mktemp("stores"))
    yield pair
    pair.stop()


@pytest.fixture
def private_stores(tmp_path: Path) -> Iterator[Stores]:
    """A pair of servers only this test uses: it may stop and restart them."""
    pair = _start_stores(tmp_path)
    yield pair
    pair.stop()


@pytest.fixture
def tenant() -> str:
    """A tenant id no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg_pool(stores: Stores) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pg_pool(stores.pg_url, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture
async def redis_client(stores: Stores) -> AsyncIterator[aioredis.Redis]:
    client = open_redis(stores.redis_url)
    yield client
    await client.aclose()
