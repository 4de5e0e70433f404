"""Device connections: a device connects with its API key and gets its settings; an admin
resets the connection to issue a new key (optionally keeping the old one for a grace period)."""

from __future__ import annotations

import hashlib

from aiohttp import web

from admin_api import audit, schemas
from admin_api.auth import DEVICE_WRITE, authorize
from admin_api.context import PG_POOL, REDIS, SETTINGS
from admin_api.devices import device_id_param, fetch_device
from admin_api.edgesync import EDGE_SYNC
from admin_api.errors import Problem
from admin_api.serialize import device_json
from admin_api.validation import read_json, validator
from gatekeeper.domain.credentials import DEVICE_KEY_PREFIX, digest_secret, secrets_equal
from gatekeeper.domain.identity import valid_device_id
from gatekeeper.store import edge_writes as store
from gatekeeper.store.edge_writes import DEVICE_VIEW
from gatekeeper.store.outbox import emit

__all__ = ["connect_device", "reset_connection"]

_RESET = validator(schemas.RESET_REQUEST)
_EMPTY = validator({"type": "object", "properties": {}, "additionalProperties": False})


def _bad_key(detail: str) -> Problem:
    return Problem(
        401,
        detail,
        type_="invalid-api-key",
        headers={"WWW-Authenticate": 'ApiKey realm="gatekeeper-device"'},
    )


async def connect_device(request: web.Request) -> web.Response:
    """Device auth by ``X-Api-Key``; no JWT. 401 for a wrong, revoked or expired key (the same
    answer whether or not the device exists); 403 for a blocked or disabled device."""
    tenant_id = request.match_info["tenantId"]
    device_id = request.match_info["deviceId"]
    presented = request.headers.get("X-Api-Key", "")
    # A tenant id of the wrong form never gets here (admin_api.app answers 404).
    if not valid_device_id(device_id):
        raise _bad_key("The API key is not valid for this device")
    if not presented or len(presented) > schemas.API_KEY_MAX:
        raise _bad_key("A valid X-Api-Key header is required")
    await read_json(request, _EMPTY, optional=True)
    digest = digest_secret(presented, request.app[SETTINGS].key_pepper)
    pool = request.app[PG_POOL]
    stored = await pool.fetchval(
        """
        UPDATE api_keys SET last_used_at = now()
        WHERE digest = $1 AND tenant_id = $2 AND device_id = $3 AND kind = 'device'
          AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
        RETURNING digest
        """,
        digest,
        tenant_id,
        device_id,
    )
    # The look-up is by digest, which leaks nothing about the secret; the final comparison is
    # constant-time anyway, so no code path compares secret material byte by byte.
    if stored is None or not secrets_equal(bytes(stored), digest):
        raise _bad_key("The API key is not valid for this device")
    device = await pool.fetchrow(
        f"SELECT * FROM {DEVICE_VIEW} WHERE tenant_id = $1 AND device_id = $2",
        tenant_id,
        device_id,
    )
    if device is None:
        raise _bad_key("The API key is not valid for this device")
    if device["is_blocked"]:
        raise Problem(403, "The device is blocked", title="Device blocked", type_="device-blocked")
    if not device["is_enabled"]:
        raise Problem(
            403, "The device is disabled", title="Device disabled", type_="device-disabled"
        )
    return web.json_response({"settings": device_json(device)["settings"]})


def _lock_id(tenant_id: str, device_id: str) -> int:
    """An advisory-lock id for one device (signed 64 bits, as Postgres wants)."""
    raw = hashlib.sha256(f"reset {tenant_id} {device_id}".encode()).digest()[:8]
    return int.from_bytes(raw, "big", signed=True)


async def reset_connection(request: web.Request) -> web.Response:
    """Revoke the device's keys (now or after ``graceSeconds``), then issue a new one.

    An advisory lock serialises resets of one device, so two concurrent resets cannot leave two
    fresh keys alive."""
    principal = await authorize(request, DEVICE_WRITE)
    device_id = device_id_param(request)
    body = await read_json(request, _RESET, optional=True)
    grace = float(body.get("graceSeconds", 0))
    settings, pool, redis = request.app[SETTINGS], request.app[PG_POOL], request.app[REDIS]
    edge = request.app[EDGE_SYNC]
    tenant_id = principal.tenant_id
    async with pool.acquire() as lock_conn, lock_conn.transaction():
        await lock_conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_id(tenant_id, device_id))
        await fetch_device(lock_conn, tenant_id, device_id)
        revoked, _ = await edge.call(
            store.revoke_device_keys(pool, redis, tenant_id, device_id, grace_seconds=grace)
        )
        try:
            issued = await store.issue_key(
                pool,
                redis,
                tenant_id,
                kind="device",
                prefix=DEVICE_KEY_PREFIX,
                device_id=device_id,
                created_by=principal.subject,
                pepper=settings.key_pepper,
            )
        except store.EdgeSyncError as exc:
            # The key is stored but the secret went with the exception: nobody can use it, so
            # the caller must reset again. The edge is repaired in the background.
            edge.failed(exc)
            raise Problem(
                503,
                "The new key could not be published to the edge; retry",
                type_="edge-sync",
                headers={"Retry-After": "1"},
            ) from exc
        event = {"deviceId": device_id, "graceSeconds": grace, "keyPrefix": issued.prefix}
        await emit(lock_conn, tenant_id, "key.reset", event, device_id)
    await audit.record(
        request,
        principal,
        "device.connection.reset",
        "device",
        device_id,
        details={"graceSeconds": grace, "revokedKeys": revoked, "newKeyPrefix": issued.prefix},
    )
    return web.json_response(
        {
            "deviceId": device_id,
            "tenantId": tenant_id,
            "apiKey": issued.secret,
            "environment": settings.environment_url,
        },
        headers={"Cache-Control": "no-store"},
    )
