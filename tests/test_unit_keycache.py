"""The edge's key cache, on a clock the test moves: negative answers expire, so do grants.

Redis is stood in for by a dict: what is tested here is when the cache asks again and what it
answers meanwhile, which does not depend on Redis (tests/test_edge_keys.py covers the real one).
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent, KeyGrant
from gatekeeper.edge.keycache import KeyCache
from gatekeeper.types import ManualClock


class _Hash:
    """``HGET`` of one hash, counting the look-ups."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.lookups = 0

    async def hget(self, name: str, key: str) -> str | None:
        assert name == edgeview.KEYS_HASH
        self.lookups += 1
        return self.values.get(key)


def _cache(store: _Hash, clock: ManualClock, max_entries: int = 100) -> KeyCache:
    return KeyCache(
        cast(aioredis.Redis, store), max_entries=max_entries, pepper="pepper", clock=clock
    )


async def test_a_negative_answer_is_cached_for_five_seconds_then_asked_again() -> None:
    store, clock = _Hash(), ManualClock()
    cache = _cache(store, clock)
    digest = cache.digest("gk_new")
    assert await cache.grant(digest) is None
    store.values[digest] = KeyGrant("t", "pat", None, None).encode()
    clock.advance(4.9)
    assert await cache.grant(digest) is None
    assert store.lookups == 1
    clock.advance(0.2)
    assert await cache.grant(digest) == KeyGrant("t", "pat", None, None)
    assert store.lookups == 2


async def test_a_grant_is_cached_and_stops_granting_when_it_expires() -> None:
    store, clock = _Hash(), ManualClock()
    cache = _cache(store, clock)
    digest = cache.digest("gk_key")
    grant = KeyGrant("t", "device", "d1", clock.wall() + 60)
    store.values[digest] = grant.encode()
    assert await cache.grant(digest) == KeyGrant("t", "device", "d1", round(clock.wall() + 60, 3))
    clock.advance(59)
    assert await cache.grant(digest) is not None
    clock.advance(1.1)
    assert await cache.grant(digest) is None
    assert store.lookups == 1  # expiry is decided from the cached grant, without asking Redis


async def test_a_revocation_evicts_and_the_cache_is_bounded() -> None:
    store, clock = _Hash(), ManualClock()
    cache = _cache(store, clock, max_entries=2)
    digests = [cache.digest(f"gk_{i}") for i in range(3)]
    for digest in digests:
        store.values[digest] = KeyGrant("t", "pat", None, None).encode()
        assert await cache.grant(digest) is not None
    assert await cache.grant(digests[0]) is not None  # the oldest was evicted: asked again
    assert store.lookups == 4
    del store.values[digests[2]]
    cache.on_event(EdgeEvent("revoke", digests[2]))
    assert await cache.grant(digests[2]) is None
