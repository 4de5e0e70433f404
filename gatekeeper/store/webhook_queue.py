"""The webhook delivery queue (issue 14): the statements the admin's dispatcher runs on the
outbox and the delivery tables of migrations 0007 and 0008.

Safe with several dispatchers on one database: fan-out runs one at a time (a transaction
advisory lock, so per-device order survives; see docs/decisions.md "Webhook dispatcher"), and
deliveries are claimed with ``FOR UPDATE SKIP LOCKED`` by moving ``next_attempt_at`` forward by a
lease. A delivery is claimable only when no earlier delivery of the same webhook and device is
pending, which is what keeps events of one device in order. Every time ("now") is a parameter, so
a test's clock decides backoff, give-up and the disable rule.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

import asyncpg

from gatekeeper.store.outbox import TEST_EVENT

__all__ = [
    "DISABLE_AFTER",
    "RETRY_WINDOW",
    "Claimed",
    "QueueState",
    "Shares",
    "claim",
    "fan_out",
    "prune",
    "queue_state",
    "record_failure",
    "record_success",
]

# Retries stop this long after the event; a webhook failing for this long is disabled.
RETRY_WINDOW: Final = timedelta(days=1)
DISABLE_AFTER: Final = timedelta(days=1)
# "The webhook fan-out" among advisory locks (migrations hold 0x6A7E_4B3D, the stale job
# 0x6A7E_57A1).
_FAN_OUT_LOCK: Final = 0x6A7E_3E7B

# One statement: the claimed events become deliveries (the envelope stored as it will be sent,
# keys in the contract's order), and are marked fanned out.
_FAN_OUT: Final = (
    """
WITH claimed AS (
    SELECT id, event_id, tenant_id, device_id, type, created_at, data
    FROM event_outbox WHERE NOT fanned_out ORDER BY id LIMIT $1
    FOR UPDATE SKIP LOCKED
), made AS (
    INSERT INTO webhook_deliveries
        (webhook_id, tenant_id, outbox_id, event_id, device_id, body, next_attempt_at, created_at)
    SELECT w.webhook_id, c.tenant_id, c.id, c.event_id, c.device_id,
        json_build_object(
            'id', c.event_id,
            'type', c.type,
            'createdAt', to_char(c.created_at AT TIME ZONE 'UTC',
                                 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'tenantId', c.tenant_id,
            'data', c.data)::text,
        $2, c.created_at
    FROM claimed c
    JOIN webhooks w ON w.tenant_id = c.tenant_id AND w.is_enabled
        AND CASE WHEN c.type = '"""
    + TEST_EVENT
    + """'
            THEN w.webhook_id::text = c.data->>'webhookId'
            ELSE c.type = ANY (w.events) END
    ORDER BY c.id
    ON CONFLICT (webhook_id, outbox_id) DO NOTHING
    RETURNING 1
), marked AS (
    UPDATE event_outbox o SET fanned_out = true FROM claimed c WHERE o.id = c.id RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS events, (SELECT count(*) FROM made) AS deliveries
"""
)

# Due deliveries of enabled webhooks whose device has no earlier one pending, oldest first;
# webhooks in $3 and tenants in $4 (those already at their share of in-flight attempts here)
# are left out. The ordering subquery reads locked rows too: a delivery another dispatcher holds
# still blocks the later ones of its device.
_CANDIDATES: Final = """
SELECT d.id, d.webhook_id, d.tenant_id
FROM webhook_deliveries d
WHERE d.state = 'pending' AND d.next_attempt_at <= $1
    AND d.webhook_id <> ALL ($3::uuid[]) AND d.tenant_id <> ALL ($4::text[])
    AND (d.device_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM webhook_deliveries e
        WHERE e.webhook_id = d.webhook_id AND e.device_id = d.device_id
            AND e.state = 'pending' AND e.outbox_id < d.outbox_id))
    AND EXISTS (SELECT 1 FROM webhooks w WHERE w.webhook_id = d.webhook_id AND w.is_enabled)
ORDER BY d.next_attempt_at, d.outbox_id
LIMIT $2
FOR UPDATE OF d SKIP LOCKED
"""

_LEASE: Final = """
UPDATE webhook_deliveries d SET next_attempt_at = $2, attempts = d.attempts + 1
FROM webhooks w
WHERE d.id = ANY ($1::bigint[]) AND w.webhook_id = d.webhook_id
RETURNING d.id, d.webhook_id, d.tenant_id, d.body, d.attempts, d.created_at, w.url, w.secret,
    CASE WHEN w.previous_secret_until > $3 THEN w.previous_secret END AS previous_secret
"""

_ATTEMPT: Final = """
INSERT INTO webhook_attempts
    (delivery_id, webhook_id, tenant_id, attempted_at, status, duration_ms, error)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """One delivery leased to this dispatcher: ``attempt`` is its number (1 for the first),
    which also tells a late result from a lease another dispatcher took over."""

    delivery_id: int
    webhook_id: UUID
    tenant_id: str
    body: str
    attempt: int
    event_at: datetime
    url: str
    secret: str
    previous_secret: str | None  # the replaced secret, while it still signs too

    def __repr__(self) -> str:  # never a secret
        return f"Claimed(delivery_id={self.delivery_id}, webhook_id={self.webhook_id})"


@dataclass(frozen=True, slots=True)
class QueueState:
    events: int  # outbox rows not fanned out yet
    deliveries: int  # deliveries pending
    oldest: datetime | None  # the oldest of either's event time


async def fan_out(pool: asyncpg.Pool, now: datetime, batch: int) -> tuple[int, int]:
    """Turn up to ``batch`` un-fanned events into deliveries; (events, deliveries made). (0, 0)
    when another dispatcher is fanning out."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _FAN_OUT_LOCK):
            return 0, 0
        row = await conn.fetchrow(_FAN_OUT, batch, now)
        assert row is not None
        return int(row["events"]), int(row["deliveries"])


@dataclass(slots=True)
class Shares:
    """How many attempts one dispatcher runs at once per webhook and per tenant, and how many it
    has in flight: a slow receiver holds only its webhook's share, and a tenant with many slow
    webhooks only its tenant's, never every slot of every tenant."""

    per_webhook: int
    per_tenant: int
    webhooks: Counter[UUID] = field(default_factory=Counter)
    tenants: Counter[str] = field(default_factory=Counter)

    def take(self, webhook: UUID, tenant: str) -> bool:
        """Count one more attempt if both shares have room."""
        if self.webhooks[webhook] >= self.per_webhook or self.tenants[tenant] >= self.per_tenant:
            return False
        self.webhooks[webhook] += 1
        self.tenants[tenant] += 1
        return True

    def give_back(self, webhook: UUID, tenant: str) -> None:
        self.webhooks[webhook] -= 1
        if self.webhooks[webhook] <= 0:
            del self.webhooks[webhook]
        self.tenants[tenant] -= 1
        if self.tenants[tenant] <= 0:
            del self.tenants[tenant]

    def copy(self) -> Shares:
        return Shares(
            self.per_webhook, self.per_tenant, Counter(self.webhooks), Counter(self.tenants)
        )


async def claim(
    pool: asyncpg.Pool,
    now: datetime,
    lease_until: datetime,
    limit: int,
    shares: Shares,
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries within ``shares``, counting the attempts this
    dispatcher already has in flight; the caller takes the shares of what it is given."""
    full_webhooks = [w for w, n in shares.webhooks.items() if n >= shares.per_webhook]
    full_tenants = [t for t, n in shares.tenants.items() if n >= shares.per_tenant]
    async with pool.acquire() as conn, conn.transaction():
        # More candidates than wanted: the shares are applied here, the rest stay.
        candidates = await conn.fetch(_CANDIDATES, now, limit * 4, full_webhooks, full_tenants)
        trial = shares.copy()
        chosen = [
            row["id"] for row in candidates if trial.take(row["webhook_id"], row["tenant_id"])
        ][:limit]
        if not chosen:
            return []
        rows = await conn.fetch(_LEASE, chosen, lease_until, now)
    return [
        Claimed(
            r["id"],
            r["webhook_id"],
            r["tenant_id"],
            r["body"],
            r["attempts"],
            r["created_at"],
            r["url"],
            r["secret"],
            r["previous_secret"],
        )
        for r in rows
    ]


async def record_success(
    pool: asyncpg.Pool,
    claimed: Claimed,
    now: datetime,
    status: int,
    duration_ms: float,
) -> None:
    """The attempt, the delivery done, and the webhook's run of failures ended."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            _ATTEMPT,
            claimed.delivery_id,
            claimed.webhook_id,
            claimed.tenant_id,
            now,
            status,
            duration_ms,
            None,
        )
        await conn.execute(
            "UPDATE webhook_deliveries SET state = 'delivered', finished_at = $2"
            " WHERE id = $1 AND state = 'pending'",
            claimed.delivery_id,
            now,
        )
        await conn.execute(
            "UPDATE webhooks SET failing_since = NULL"
            " WHERE webhook_id = $1 AND failing_since IS NOT NULL",
            claimed.webhook_id,
        )


async def record_failure(
    pool: asyncpg.Pool,
    claimed: Claimed,
    now: datetime,
    retry_at: datetime,
    status: int | None,
    duration_ms: float,
    error: str | None,
) -> tuple[bool, int | None]:
    """The attempt, then: retry at ``retry_at``, or give up when that is past the event's
    retry window. A webhook failing for a day is disabled and its other pending deliveries
    failed. Returns (this delivery given up, how many others were failed with the webhook or
    None when it stays enabled)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            _ATTEMPT,
            claimed.delivery_id,
            claimed.webhook_id,
            claimed.tenant_id,
            now,
            status,
            duration_ms,
            error,
        )
        since: datetime | None = await conn.fetchval(
            "UPDATE webhooks SET failing_since = coalesce(failing_since, $2)"
            " WHERE webhook_id = $1 AND is_enabled RETURNING failing_since",
            claimed.webhook_id,
            now,
        )
        disable = since is not None and now - since >= DISABLE_AFTER
        gave_up = disable or retry_at > claimed.event_at + RETRY_WINDOW
        # Only while the lease is ours (same attempt number): a result that comes after another
        # dispatcher took the delivery over leaves the row to that one.
        if gave_up:
            await conn.execute(
                "UPDATE webhook_deliveries SET state = 'failed', finished_at = $3"
                " WHERE id = $1 AND attempts = $2 AND state = 'pending'",
                claimed.delivery_id,
                claimed.attempt,
                now,
            )
        else:
            await conn.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = $3"
                " WHERE id = $1 AND attempts = $2 AND state = 'pending'",
                claimed.delivery_id,
                claimed.attempt,
                retry_at,
            )
        if not disable:
            return gave_up, None
        # failing_since cleared: a webhook enabled again gets a day of its own.
        await conn.execute(
            "UPDATE webhooks SET is_enabled = false, disabled_at = $2, failing_since = NULL"
            " WHERE webhook_id = $1",
            claimed.webhook_id,
            now,
        )
        dropped = _count(
            await conn.execute(
                "UPDATE webhook_deliveries SET state = 'failed', finished_at = $2"
                " WHERE webhook_id = $1 AND state = 'pending'",
                claimed.webhook_id,
                now,
            )
        )
    return gave_up, dropped


async def queue_state(pool: asyncpg.Pool) -> QueueState:
    row = await pool.fetchrow(
        """
        SELECT
            (SELECT count(*) FROM event_outbox WHERE NOT fanned_out) AS events,
            (SELECT min(created_at) FROM event_outbox WHERE NOT fanned_out) AS oldest_event,
            (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending') AS deliveries,
            (SELECT min(created_at) FROM webhook_deliveries WHERE state = 'pending')
                AS oldest_delivery
        """
    )
    assert row is not None
    times = [t for t in (row["oldest_event"], row["oldest_delivery"]) if t is not None]
    return QueueState(int(row["events"]), int(row["deliveries"]), min(times, default=None))


async def prune(pool: asyncpg.Pool, cutoff: datetime, batch: int = 5_000) -> tuple[int, int]:
    """Delete finished deliveries (their attempts go with them) and fanned-out events older
    than ``cutoff``, in batches; (deliveries, events) deleted."""
    deliveries = events = 0
    while True:
        gone = _count(
            await pool.execute(
                "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries"
                " WHERE state <> 'pending' AND finished_at < $1 LIMIT $2)",
                cutoff,
                batch,
            )
        )
        deliveries += gone
        if gone < batch:
            break
    while True:
        gone = _count(
            await pool.execute(
                "DELETE FROM event_outbox WHERE id IN (SELECT id FROM event_outbox"
                " WHERE fanned_out AND created_at < $1 ORDER BY id LIMIT $2)",
                cutoff,
                batch,
            )
        )
        events += gone
        if gone < batch:
            break
    return deliveries, events


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])
