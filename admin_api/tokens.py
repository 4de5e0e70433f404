"""Personal access tokens: create (the secret is shown once), list (no secrets), revoke."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from admin_api import audit, schemas
from admin_api.auth import TOKEN_READ, TOKEN_WRITE, authorize
from admin_api.context import PG_POOL, REDIS, SETTINGS
from admin_api.edgesync import EDGE_SYNC
from admin_api.errors import FieldError, Problem, not_found, unprocessable
from admin_api.serialize import rfc3339, token_json
from admin_api.validation import check_query, parse_timestamp, read_json, validator
from gatekeeper.domain.credentials import TOKEN_PREFIX
from gatekeeper.store import edge_writes as store
from gatekeeper.store.outbox import emit

__all__ = ["create_token", "list_tokens", "revoke_token"]

_CREATE = validator(schemas.CREATE_TOKEN)


async def create_token(request: web.Request) -> web.Response:
    principal = await authorize(request, TOKEN_WRITE)
    body = await read_json(request, _CREATE)
    expires_at: datetime | None = None
    if body.get("expiresAt") is not None:
        expires_at = parse_timestamp(body["expiresAt"], "expiresAt")
        if expires_at <= datetime.now(UTC):
            raise unprocessable([FieldError(field="expiresAt", message="must be in the future")])
    settings, pool, edge = request.app[SETTINGS], request.app[PG_POOL], request.app[EDGE_SYNC]
    try:
        # The row and its event in one transaction (the edge's grant is written before the
        # commit: a Redis failure rolls both back, and the caller retries).
        async with pool.acquire() as conn, conn.transaction():
            issued = await store.issue_key(
                conn,
                request.app[REDIS],
                principal.tenant_id,
                kind="pat",
                prefix=TOKEN_PREFIX,
                name=body["name"],
                expires_at=expires_at,
                created_by=principal.subject,
                pepper=settings.key_pepper,
            )
            event = {"tokenId": str(issued.key_id), "name": body["name"], "prefix": issued.prefix}
            await emit(conn, principal.tenant_id, "token.created", event)
            created_at = await conn.fetchval(
                "SELECT created_at FROM api_keys WHERE key_id = $1", issued.key_id
            )
    except store.EdgeSyncError as exc:
        # Nothing was stored and the secret was never shown: the caller retries.
        edge.failed(exc)
        raise Problem(
            503,
            "The token could not be published to the edge; retry",
            type_="edge-sync",
            headers={"Retry-After": "1"},
        ) from exc
    token_id = str(issued.key_id)
    await audit.record(
        request,
        principal,
        "token.create",
        "token",
        token_id,
        details={"name": body["name"], "prefix": issued.prefix},
    )
    return web.json_response(
        {
            "tokenId": token_id,
            "name": body["name"],
            "token": issued.secret,
            "createdAt": rfc3339(created_at),
            "expiresAt": rfc3339(expires_at),
        },
        status=201,
        headers={
            "Location": f"/api/{quote(principal.tenant_id, safe='')}/tokens/{token_id}",
            "Cache-Control": "no-store",
        },
    )


async def list_tokens(request: web.Request) -> web.Response:
    """Every token of the tenant, newest first, revoked ones included (with ``revokedAt``)."""
    principal = await authorize(request, TOKEN_READ)
    check_query(request, ())
    rows = await request.app[PG_POOL].fetch(
        "SELECT key_id, name, prefix, created_by, created_at, expires_at, last_used_at,"
        " revoked_at FROM api_keys WHERE tenant_id = $1 AND kind = 'pat'"
        " ORDER BY created_at DESC, key_id",
        principal.tenant_id,
    )
    return web.json_response([token_json(r) for r in rows])


async def revoke_token(request: web.Request) -> web.Response:
    """204 whether the token was live or already revoked (idempotent); 404 if unknown."""
    principal = await authorize(request, TOKEN_WRITE)
    try:
        token_id = uuid.UUID(request.match_info["tokenId"])
    except ValueError:
        raise not_found("No such token") from None
    pool = request.app[PG_POOL]
    async with pool.acquire() as conn, conn.transaction():
        revoked, synced = await request.app[EDGE_SYNC].call(
            store.revoke_key(conn, request.app[REDIS], principal.tenant_id, token_id, kind="pat")
        )
        # Redis is only told after the revocation's UPDATE found the key: a failed edge write
        # means this call revoked it (Postgres is the truth; the reconciler repairs the edge).
        revoked = bool(revoked) or not synced
        if revoked:  # in the revocation's transaction, as every event is
            await emit(conn, principal.tenant_id, "token.revoked", {"tokenId": str(token_id)})
    if not revoked:
        exists = await pool.fetchval(
            "SELECT true FROM api_keys WHERE tenant_id = $1 AND key_id = $2 AND kind = 'pat'",
            principal.tenant_id,
            token_id,
        )
        if not exists:
            raise not_found("No such token")
        return web.Response(status=204)
    await audit.record(request, principal, "token.revoke", "token", str(token_id))
    return web.Response(status=204)
