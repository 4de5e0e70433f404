"""Changes that the edge must see: block, unblock, disable, enable, issue and revoke keys.

Each function writes Postgres first (the truth, in one transaction), then the Redis edge view,
then publishes the change. If Redis fails after Postgres committed, :class:`EdgeSyncError` is
raised: the change is durable, and :func:`reconcile` (run by the admin API at start, on demand
and periodically) brings Redis back in line. The admin API calls these; so do the tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Literal

import asyncpg

from gatekeeper.domain import edgeview
from gatekeeper.domain.credentials import digest_secret, display_prefix, new_secret
from gatekeeper.domain.edgeview import EdgeEvent, KeyGrant
from gatekeeper.store.clients import REDIS_FAILURES, RedisClient, RedisPipeline, is_cluster
from gatekeeper.store.outbox import Conn, emit

__all__ = [
    "DEVICE_VIEW",
    "BlockMode",
    "EdgeSyncError",
    "IssuedKey",
    "issue_key",
    "publish",
    "reconcile",
    "revoke_device_keys",
    "revoke_key",
    "set_blocked",
    "set_enabled",
]

Pool = asyncpg.Pool
BlockMode = Literal["enforce", "shadow"]
Redis = RedisClient

# A device as the admin API shows it: ``devices`` joined with ``device_activity`` (migration 0004).
DEVICE_VIEW = "devices_with_activity"
_DEVICE_ROW = f"SELECT * FROM {DEVICE_VIEW} WHERE tenant_id = $1 AND device_id = $2"


class EdgeSyncError(RuntimeError):
    """Postgres holds the change but Redis could not be told; reconcile will repair it."""


async def publish(redis: Redis, events: Iterable[EdgeEvent]) -> None:
    # Sharded on a cluster: only the channel's shard carries it, where the mirrors SSUBSCRIBE.
    send = redis.spublish if is_cluster(redis) else redis.publish
    for event in events:
        await send(edgeview.CHANNEL, edgeview.encode(event))


async def _sync(
    redis: Redis, stage: Callable[[RedisPipeline], object], events: list[EdgeEvent]
) -> None:
    """Apply ``stage``'s commands and publish ``events`` in one atomic round trip (MULTI/EXEC):
    a subscriber never sees the announcement before the change, and the change costs one hop."""
    try:
        async with redis.pipeline(transaction=True) as pipe:
            stage(pipe)
            send = pipe.spublish if is_cluster(redis) else pipe.publish
            for event in events:
                send(edgeview.CHANNEL, edgeview.encode(event))
            await pipe.execute()
    except REDIS_FAILURES as exc:
        raise EdgeSyncError(str(exc)) from exc


async def set_blocked(
    pool: Pool,
    redis: Redis,
    tenant_id: str,
    device_id: str,
    blocked: bool,
    reason: str | None = None,
    *,
    create: bool = False,
    mode: BlockMode = "enforce",
) -> asyncpg.Record | None:
    """Block or unblock a device; idempotent. Returns the device row, None if unknown.

    ``mode`` is the block's (a shadow block forwards and counts); blocking again with the other
    mode switches it in place, and an unblock clears either. With ``create``, an unknown device
    is registered blocked (the edge may block a device before it ever called)."""
    async with pool.acquire() as conn, conn.transaction():
        if create:
            await conn.execute(
                "INSERT INTO devices (tenant_id, device_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                tenant_id,
                device_id,
            )
        # Re-blocking keeps the first blockedAt; the reason is replaced only when one is given.
        # A trigger copies the block into the device's activity row (the list's sort key).
        changed = await conn.fetchval(
            """
            UPDATE devices SET
                is_blocked = $3,
                blocked_at = CASE WHEN $3 THEN COALESCE(blocked_at, now()) ELSE NULL END,
                block_reason = CASE WHEN $3 THEN COALESCE($4, block_reason) ELSE NULL END,
                block_mode = CASE WHEN $3 THEN $5 ELSE NULL END,
                updated_at = CASE WHEN is_blocked = $3 AND block_mode IS NOT DISTINCT FROM
                                      (CASE WHEN $3 THEN $5 END)
                                  THEN updated_at ELSE now() END
            WHERE tenant_id = $1 AND device_id = $2
            RETURNING updated_at = now()
            """,
            tenant_id,
            device_id,
            blocked,
            reason,
            mode,
        )
        row: asyncpg.Record | None = (
            None if changed is None else await conn.fetchrow(_DEVICE_ROW, tenant_id, device_id)
        )
        if changed:  # now() is the transaction's start: true only when this call changed it
            data: dict[str, object] = {"deviceId": device_id}
            if blocked:
                data |= {"reason": row["block_reason"] if row else reason, "mode": mode}
            type_ = "device.blocked" if blocked else "device.unblocked"
            await emit(conn, tenant_id, type_, data, device_id)
    if row is None:
        return None
    key = edgeview.member(tenant_id, device_id)
    await _sync(
        redis,
        lambda pipe: _stage_block(pipe, key, blocked, mode),
        _block_events(key, blocked, mode),
    )
    return row


def _stage_block(pipe: RedisPipeline, key: str, blocked: bool, mode: BlockMode) -> None:
    """A device is in at most one of the blocked and shadow sets (neither when unblocked)."""
    shadow = blocked and mode == "shadow"
    (pipe.sadd if blocked and not shadow else pipe.srem)(edgeview.BLOCKED_SET, key)
    (pipe.sadd if shadow else pipe.srem)(edgeview.SHADOW_SET, key)


def _block_events(key: str, blocked: bool, mode: BlockMode) -> list[EdgeEvent]:
    if not blocked:
        return [EdgeEvent("unblock", key)]
    if mode == "enforce":
        return [EdgeEvent("block", key)]
    # "unblock" first: a proxy older than shadow blocks ignores "shadow", and must not keep
    # enforcing a block that became a shadow one (see gatekeeper.domain.edgeview).
    return [EdgeEvent("unblock", key), EdgeEvent("shadow", key)]


async def set_enabled(
    pool: Pool,
    redis: Redis,
    tenant_id: str,
    device_id: str,
    enabled: bool,
) -> asyncpg.Record | None:
    """Enable or disable a device; idempotent. Returns the device row, None if unknown."""
    async with pool.acquire() as conn:
        changed = await conn.fetchval(
            """
            UPDATE devices SET is_enabled = $3,
                updated_at = CASE WHEN is_enabled = $3 THEN updated_at ELSE now() END
            WHERE tenant_id = $1 AND device_id = $2
            RETURNING device_id
            """,
            tenant_id,
            device_id,
            enabled,
        )
        row: asyncpg.Record | None = (
            None if changed is None else await conn.fetchrow(_DEVICE_ROW, tenant_id, device_id)
        )
    if row is None:
        return None
    key = edgeview.member(tenant_id, device_id)

    await _sync(
        redis,
        lambda pipe: (pipe.srem if enabled else pipe.sadd)(edgeview.DISABLED_SET, key),
        [EdgeEvent("enable" if enabled else "disable", key)],
    )
    return row


class IssuedKey:
    """A freshly issued secret. ``secret`` is shown to its owner once and never stored."""

    __slots__ = ("expires_at", "key_id", "prefix", "secret")

    def __init__(
        self, key_id: uuid.UUID, secret: str, prefix: str, expires_at: datetime | None
    ) -> None:
        self.key_id = key_id
        self.secret = secret
        self.prefix = prefix
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"IssuedKey(key_id={self.key_id}, prefix={self.prefix!r}, secret=***)"


def _grant_value(
    tenant_id: str, kind: str, device_id: str | None, expires_at: datetime | None
) -> str:
    return KeyGrant(
        tenant_id,
        kind,  # type: ignore[arg-type]
        device_id,
        None if expires_at is None else expires_at.timestamp(),
    ).encode()


async def issue_key(
    pool: Pool | Conn,
    redis: Redis,
    tenant_id: str,
    *,
    kind: Literal["device", "pat"],
    prefix: str,
    device_id: str | None = None,
    name: str | None = None,
    expires_at: datetime | None = None,
    created_by: str | None = None,
    pepper: str | None = None,
) -> IssuedKey:
    """Create a key, store its digest, and make it valid at the edge."""
    secret = new_secret(prefix)
    digest = digest_secret(secret, pepper)
    key_id = uuid.uuid4()
    await pool.execute(
        """
        INSERT INTO api_keys (key_id, tenant_id, kind, device_id, name, digest, prefix,
                              created_by, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        """,
        key_id,
        tenant_id,
        kind,
        device_id,
        name,
        digest,
        display_prefix(secret),
        created_by,
        expires_at,
    )
    value = _grant_value(tenant_id, kind, device_id, expires_at)

    await _sync(redis, lambda pipe: pipe.hset(edgeview.KEYS_HASH, digest.hex(), value), [])
    return IssuedKey(key_id, secret, display_prefix(secret), expires_at)


async def _drop_from_edge(redis: Redis, digests: list[bytes]) -> None:
    if not digests:
        return
    hexes = [d.hex() for d in digests]

    await _sync(
        redis,
        lambda pipe: pipe.hdel(edgeview.KEYS_HASH, *hexes),
        [EdgeEvent("revoke", h) for h in hexes],
    )


async def revoke_key(
    pool: Pool | Conn,
    redis: Redis,
    tenant_id: str,
    key_id: uuid.UUID,
    kind: Literal["device", "pat"] | None = None,
) -> bool:
    """Revoke one key of the tenant now. False if the tenant has no such (unrevoked) key."""
    digest: bytes | None = await pool.fetchval(
        """
        UPDATE api_keys SET revoked_at = now()
        WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL
          AND ($3::text IS NULL OR kind = $3)
        RETURNING digest
        """,
        tenant_id,
        key_id,
        kind,
    )
    if digest is None:
        return False
    await _drop_from_edge(redis, [digest])
    return True


async def revoke_device_keys(
    pool: Pool | asyncpg.Connection,
    redis: Redis,
    tenant_id: str,
    device_id: str,
    *,
    grace_seconds: float = 0.0,
) -> int:
    """Revoke every live key of a device, at once or after ``grace_seconds``.

    With a grace period the keys stay valid until then: their expiry is moved forward to that
    instant (in Postgres and in the edge view), which the edge already enforces."""
    if grace_seconds > 0:
        rows = await pool.fetch(
            """
            UPDATE api_keys SET expires_at = LEAST(COALESCE(expires_at, 'infinity'),
                                                   now() + make_interval(secs => $3))
            WHERE tenant_id = $1 AND device_id = $2 AND revoked_at IS NULL
            RETURNING digest, expires_at
            """,
            tenant_id,
            device_id,
            grace_seconds,
        )
        values = {
            r["digest"].hex(): _grant_value(tenant_id, "device", device_id, r["expires_at"])
            for r in rows
        }
        if values:
            await _sync(
                redis,
                lambda pipe: pipe.hset(edgeview.KEYS_HASH, mapping=values),
                [EdgeEvent("revoke", h) for h in values],
            )
        return len(values)
    digests = [
        r["digest"]
        for r in await pool.fetch(
            """
        UPDATE api_keys SET revoked_at = now()
        WHERE tenant_id = $1 AND device_id = $2 AND revoked_at IS NULL
        RETURNING digest
        """,
            tenant_id,
            device_id,
        )
    ]
    await _drop_from_edge(redis, digests)
    return len(digests)


async def reconcile(pool: Pool, redis: Redis) -> dict[str, int]:
    """Rebuild the whole Redis edge view from Postgres, atomically, then announce a resync."""
    async with pool.acquire() as conn:
        blocked: list[str] = []
        shadow: list[str] = []
        for r in await conn.fetch(
            "SELECT tenant_id, device_id, block_mode FROM devices WHERE is_blocked"
        ):
            (shadow if r[2] == "shadow" else blocked).append(edgeview.member(r[0], r[1]))
        disabled = [
            edgeview.member(r[0], r[1])
            for r in await conn.fetch(
                "SELECT tenant_id, device_id FROM devices WHERE NOT is_enabled"
            )
        ]
        keys = {
            r["digest"].hex(): _grant_value(
                r["tenant_id"], r["kind"], r["device_id"], r["expires_at"]
            )
            for r in await conn.fetch(
                "SELECT tenant_id, kind, device_id, digest, expires_at FROM api_keys"
                " WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
            )
        }
    suffix = uuid.uuid4().hex
    try:
        async with redis.pipeline(transaction=True) as pipe:
            for name, members in (
                (edgeview.BLOCKED_SET, blocked),
                (edgeview.SHADOW_SET, shadow),
                (edgeview.DISABLED_SET, disabled),
            ):
                staging = f"{name}:staging:{suffix}"
                if members:
                    pipe.sadd(staging, *members)
                    pipe.rename(staging, name)
                else:
                    pipe.delete(name)
            staging = f"{edgeview.KEYS_HASH}:staging:{suffix}"
            if keys:
                pipe.hset(staging, mapping=keys)
                pipe.rename(staging, edgeview.KEYS_HASH)
            else:
                pipe.delete(edgeview.KEYS_HASH)
            pipe.set(edgeview.BUILT_KEY, datetime.now().isoformat())  # when: for an operator
            await pipe.execute()
        await publish(redis, [EdgeEvent("resync")])
    except REDIS_FAILURES as exc:
        raise EdgeSyncError(str(exc)) from exc
    return {
        "blocked": len(blocked),
        "shadow": len(shadow),
        "disabled": len(disabled),
        "keys": len(keys),
    }
