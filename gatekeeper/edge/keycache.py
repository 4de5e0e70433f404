"""Enforce mode: which presented secrets are valid, cached in-process by digest.

A hit costs one SHA-256 and one dict look-up. A miss asks Redis (``HGET {gk}:keys <digest>``) once;
the answer, positive or negative, is cached. Revocations arrive on the blocklist channel and evict
the entry; a full resync clears the cache, so nothing missed while Redis was away survives it.
Negative entries expire after a few seconds: keys are random, so only a guess is ever negative.
"""

from __future__ import annotations

from collections import OrderedDict

from gatekeeper.domain import edgeview
from gatekeeper.domain.credentials import digest_secret
from gatekeeper.domain.edgeview import EdgeEvent, KeyGrant
from gatekeeper.store.clients import RedisClient
from gatekeeper.types import SYSTEM_CLOCK, Clock

__all__ = ["KeyCache"]

_NEGATIVE_TTL = 5.0


class KeyCache:
    __slots__ = ("_clock", "_entries", "_generation", "_max", "_pepper", "_redis")

    def __init__(
        self,
        redis: RedisClient,
        *,
        max_entries: int,
        pepper: str | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._redis = redis
        self._clock = clock
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
        now = self._clock.monotonic()
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

    def _live(self, grant: KeyGrant | None) -> KeyGrant | None:
        expires_at = grant.expires_at if grant is not None else None
        if expires_at is not None and expires_at <= self._clock.wall():
            return None
        return grant

    def on_event(self, event: EdgeEvent) -> None:
        if event.kind == "revoke":
            self._generation += 1
            self._entries.pop(event.subject, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
