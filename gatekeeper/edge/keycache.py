"""Enforce mode: which presented secrets are valid, cached in-process by digest.

A hit costs one SHA-256 and one dict look-up. A miss asks Redis (``HGET gk:keys <digest>``) once;
the answer, positive or negative, is cached. Revocations arrive on the blocklist channel and evict
the entry; a full resync clears the cache, so nothing missed while Redis was away survives it.
Negative entries expire after a few seconds: keys are random, so only a guess is ever negative.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import redis.asyncio as aioredis

from gatekeeper.domain import edgeview
from gatekeeper.domain.credentials import digest_secret
from gatekeeper.domain.edgeview import EdgeEvent, KeyGrant

__all__ = ["KeyCache"]

_NEGATIVE_TTL = 5.0


class KeyCache:
    __slots__ = ("_entries", "_generation", "_max", "_pepper", "_redis")

    def __init__(self, redis: aioredis.Redis, *, max_entries: int, pepper: str | None) -> None:
        self._redis = redis
        self._max = max_entries
        self._pepper = pepper
        # digest hex -> (grant or None, monotonic time cached)
        self._entries: OrderedDict[str, tuple[KeyGrant | None, float]] = OrderedDict()
        # Bumped by every revocation and resync: an answer that was in flight meanwhile may
        # predate the revocation, so it is used once but not cached.
        self._generation = 0

    def digest(self, secret: str) -> str:
        return digest_secret(secret, self._pepper).hex()

    async def grant(self, digest: str) -> KeyGrant | None:
        """The grant of a digest, or None if no valid key has it. May raise RedisError on a miss."""
        entry = self._entries.get(digest)
        now = time.monotonic()
        if entry is not None:
            grant, cached_at = entry
            if grant is not None or now - cached_at < _NEGATIVE_TTL:
                return self._live(grant)
        generation = self._generation
        raw = await self._redis.hget(edgeview.KEYS_HASH, digest)
        grant = KeyGrant.decode(raw if isinstance(raw, str) else raw.decode()) if raw else None
        if generation == self._generation:
            self._entries[digest] = (grant, now)
            if len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return self._live(grant)

    @staticmethod
    def _live(grant: KeyGrant | None) -> KeyGrant | None:
        if grant is not None and grant.expires_at is not None and grant.expires_at <= time.time():
            return None
        return grant

    def on_event(self, event: EdgeEvent) -> None:
        if event.kind == "revoke":
            self._generation += 1
            self._entries.pop(event.subject, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
