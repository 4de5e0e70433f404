"""A tenant's webhooks and their deliveries, as the admin routes read and change them (issue 14;
tables of migration 0008). The dispatcher writes deliveries and attempts; this module only
reads them.

No query here selects ``webhooks.secret`` (nor ``previous_secret``): a secret leaves the database
only for signing, so no row handed to the admin API (nor its repr, nor a log line about it) can
carry it. :func:`reset_secret` writes a new one, which the route shows once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg

from gatekeeper.store.outbox import TEST_EVENT, Conn, emit

__all__ = [
    "ATTEMPT_LOG_MAX",
    "MAX_WEBHOOKS_PER_TENANT",
    "UNCHANGED",
    "WebhookDisabled",
    "create_webhook",
    "delete_webhook",
    "emit_test",
    "get_webhook",
    "list_deliveries",
    "list_webhooks",
    "reset_secret",
    "update_webhook",
]

# A tenant's webhooks at most: each one multiplies every event into a delivery.
MAX_WEBHOOKS_PER_TENANT: Final = 50
# The latest attempts shown per delivery (``attempts`` counts them all).
ATTEMPT_LOG_MAX: Final = 10
# "Leave this field as it is" for update_webhook (None means NULL for the description).
UNCHANGED: Final[Any] = object()

_COLUMNS: Final = (
    "webhook_id, url, events, description, is_enabled, disabled_at, failing_since, created_at"
)
_Pool = asyncpg.Pool | Conn


async def create_webhook(
    pool: asyncpg.Pool,
    tenant_id: str,
    *,
    url: str,
    events: Sequence[str],
    description: str | None,
    secret: str,
) -> asyncpg.Record | None:
    """The new webhook's row (without its secret); None when the tenant has its maximum."""
    async with pool.acquire() as conn, conn.transaction():
        # One creation at a time per tenant, so two cannot both pass the count.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('webhooks ' || $1, 0))", tenant_id
        )
        count = await conn.fetchval("SELECT count(*) FROM webhooks WHERE tenant_id = $1", tenant_id)
        if count >= MAX_WEBHOOKS_PER_TENANT:
            return None
        row: asyncpg.Record | None = await conn.fetchrow(
            f"""
            INSERT INTO webhooks (webhook_id, tenant_id, url, events, description, secret)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING {_COLUMNS}
            """,
            uuid.uuid4(),
            tenant_id,
            url,
            list(events),
            description,
            secret,
        )
        return row


async def list_webhooks(
    pool: _Pool, tenant_id: str, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[asyncpg.Record]:
    """Newest first by (created_at, webhook_id), after the keyset position ``after``."""
    args: list[Any] = [tenant_id, limit]
    where = "tenant_id = $1"
    if after is not None:
        args += list(after)
        where += " AND (created_at, webhook_id) < ($3, $4)"
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {_COLUMNS} FROM webhooks WHERE {where}"
        " ORDER BY created_at DESC, webhook_id DESC LIMIT $2",
        *args,
    )
    return rows


async def get_webhook(pool: _Pool, tenant_id: str, webhook_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2",
        tenant_id,
        webhook_id,
    )
    return row


async def delete_webhook(pool: _Pool, tenant_id: str, webhook_id: uuid.UUID) -> bool:
    """Delete it with its deliveries and their attempts (the tables cascade)."""
    deleted = await pool.fetchval(
        "DELETE FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2 RETURNING true",
        tenant_id,
        webhook_id,
    )
    return bool(deleted)


async def update_webhook(
    pool: _Pool,
    tenant_id: str,
    webhook_id: uuid.UUID,
    *,
    enabled: bool | None = None,
    events: Sequence[str] | None = None,
    description: Any = UNCHANGED,
) -> asyncpg.Record | None:
    """Change what is given; None when the tenant has no such webhook.

    Enabling clears ``disabled_at`` and ``failing_since`` (a webhook the dispatcher disabled
    after a day of failures starts afresh); disabling sets ``disabled_at`` unless it was
    already disabled. Either is a no-op when the webhook already is so."""
    row: asyncpg.Record | None = await pool.fetchrow(
        f"""
        UPDATE webhooks SET
            is_enabled = COALESCE($3, is_enabled),
            disabled_at = CASE
                WHEN $3 IS NULL THEN disabled_at
                WHEN $3 THEN NULL
                ELSE (CASE WHEN is_enabled THEN now() ELSE disabled_at END) END,
            failing_since = CASE
                WHEN $3 AND NOT is_enabled THEN NULL ELSE failing_since END,
            events = COALESCE($4, events),
            description = CASE WHEN $5 THEN $6 ELSE description END
        WHERE tenant_id = $1 AND webhook_id = $2
        RETURNING {_COLUMNS}
        """,
        tenant_id,
        webhook_id,
        enabled,
        None if events is None else list(events),
        description is not UNCHANGED,
        None if description is UNCHANGED else description,
    )
    return row


async def reset_secret(
    pool: _Pool, tenant_id: str, webhook_id: uuid.UUID, secret: str, grace_seconds: float
) -> tuple[bool, datetime | None]:
    """Make ``secret`` the signing secret. With a grace period the one it replaces signs beside
    it until then (any earlier previous secret is dropped); without, it stops at once.
    (found, when the previous secret stops signing)."""
    row = await pool.fetchrow(
        """
        UPDATE webhooks SET
            previous_secret = CASE WHEN $4 > 0 THEN secret END,
            previous_secret_until = CASE WHEN $4 > 0 THEN now() + make_interval(secs => $4) END,
            secret = $3
        WHERE tenant_id = $1 AND webhook_id = $2
        RETURNING previous_secret_until
        """,
        tenant_id,
        webhook_id,
        secret,
        float(grace_seconds),
    )
    if row is None:
        return False, None
    until: datetime | None = row["previous_secret_until"]
    return True, until


async def list_deliveries(
    pool: _Pool, tenant_id: str, webhook_id: uuid.UUID, limit: int, before: int | None
) -> list[asyncpg.Record]:
    """Newest event first (by outbox id, which the unique (webhook_id, outbox_id) index
    orders), each with its latest :data:`ATTEMPT_LOG_MAX` attempts as ``attempt_log``, a JSON
    array in the order they were made."""
    args: list[Any] = [tenant_id, webhook_id, limit, ATTEMPT_LOG_MAX]
    where = "d.tenant_id = $1 AND d.webhook_id = $2"
    if before is not None:
        args.append(before)
        where += " AND d.outbox_id < $5"
    rows: list[asyncpg.Record] = await pool.fetch(
        f"""
        SELECT d.id, d.outbox_id, d.event_id, d.device_id, d.state, d.attempts,
               d.next_attempt_at, d.created_at, d.finished_at, d.body,
               COALESCE(log.attempts, '[]') AS attempt_log
        FROM webhook_deliveries d
        LEFT JOIN LATERAL (
            SELECT json_agg(json_build_object(
                       'attemptedAt', a.attempted_at, 'status', a.status,
                       'durationMs', a.duration_ms, 'error', a.error) ORDER BY a.id) AS attempts
            FROM (SELECT * FROM webhook_attempts
                  WHERE delivery_id = d.id ORDER BY id DESC LIMIT $4) a
        ) log ON true
        WHERE {where}
        ORDER BY d.outbox_id DESC
        LIMIT $3
        """,
        *args,
    )
    return rows


class WebhookDisabled(Exception):
    """The webhook is disabled: the dispatcher gives it nothing, a test event included."""


async def emit_test(pool: asyncpg.Pool, tenant_id: str, webhook_id: uuid.UUID) -> uuid.UUID | None:
    """Write a ``webhook.test`` event for this webhook and return its event id; None if the
    tenant has no such webhook; :class:`WebhookDisabled` if it is disabled.

    The row lock keeps a concurrent delete or pause from committing between the check and the
    event."""
    async with pool.acquire() as conn, conn.transaction():
        enabled: bool | None = await conn.fetchval(
            "SELECT is_enabled FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2 FOR SHARE",
            tenant_id,
            webhook_id,
        )
        if enabled is None:
            return None
        if not enabled:
            raise WebhookDisabled(str(webhook_id))
        return await emit(conn, tenant_id, TEST_EVENT, {"webhookId": str(webhook_id)})
