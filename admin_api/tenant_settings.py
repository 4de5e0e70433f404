"""Tenant settings routes (``GET``/``PUT /api/{tenantId}/settings``) and the stale-device report
(``GET /api/{tenantId}/settings/stale-report``): what the daily job
(:mod:`admin_api.stalejob`) would delete if it ran now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from admin_api import audit, schemas
from admin_api.auth import DEVICE_READ, DEVICE_WRITE, authorize
from admin_api.context import CLOCK, PG_POOL
from admin_api.errors import FieldError, bad_request
from admin_api.serialize import rfc3339
from admin_api.validation import check_query, read_json, validator
from gatekeeper.store.stale_devices import count_stale, stale_candidates

__all__ = ["REPORT_MAX_IDS", "get_settings", "put_settings", "stale_cutoff", "stale_report"]

REPORT_MAX_IDS: Final = 1000  # the report lists this many ids at most (and says so: truncated)
_SETTINGS = validator(schemas.TENANT_SETTINGS)


def stale_cutoff(now: float, days: int) -> datetime:
    """Devices last active before this instant are stale (``now`` in Unix seconds)."""
    return datetime.fromtimestamp(now, UTC) - timedelta(days=days)


def _settings_json(row: Any) -> dict[str, Any]:
    if row is None:
        return {"staleDeviceDays": None, "updatedAt": None}
    return {"staleDeviceDays": row["stale_device_days"], "updatedAt": rfc3339(row["updated_at"])}


async def _read(request: web.Request, tenant_id: str) -> Any:
    return await request.app[PG_POOL].fetchrow(
        "SELECT stale_device_days, updated_at FROM tenant_settings WHERE tenant_id = $1",
        tenant_id,
    )


async def get_settings(request: web.Request) -> web.Response:
    """The tenant's settings; every one at its default (null) when never set."""
    principal = await authorize(request, DEVICE_READ)
    check_query(request, ())
    return web.json_response(_settings_json(await _read(request, principal.tenant_id)))


async def put_settings(request: web.Request) -> web.Response:
    """Replace the tenant's settings (every field given; null for the default)."""
    principal = await authorize(request, DEVICE_WRITE)
    body = await read_json(request, _SETTINGS)
    row = await request.app[PG_POOL].fetchrow(
        """
        INSERT INTO tenant_settings (tenant_id, stale_device_days) VALUES ($1, $2)
        ON CONFLICT (tenant_id) DO UPDATE
            SET stale_device_days = EXCLUDED.stale_device_days, updated_at = now()
        RETURNING stale_device_days, updated_at
        """,
        principal.tenant_id,
        body["staleDeviceDays"],
    )
    await audit.record(
        request, principal, "tenant.settings", "tenant", principal.tenant_id, details=body
    )
    return web.json_response(_settings_json(row))


def _days_param(request: web.Request) -> int | None:
    raw = request.query.get("staleDeviceDays")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= schemas.STALE_DAYS_MAX:
        raise bad_request(
            "Invalid query parameters",
            [
                FieldError(
                    field="query.staleDeviceDays",
                    message=f"must be an integer from 1 to {schemas.STALE_DAYS_MAX}",
                )
            ],
        )
    return int(raw)


async def stale_report(request: web.Request) -> web.Response:
    """What the stale-device job would delete now: for the tenant's setting, or for the
    ``staleDeviceDays`` given (a preview before setting it). Ids in id order, the job's order."""
    principal = await authorize(request, DEVICE_READ)
    check_query(request, ("staleDeviceDays",))
    days = _days_param(request)
    if days is None:
        row = await _read(request, principal.tenant_id)
        days = None if row is None else row["stale_device_days"]
    if days is None:
        report: dict[str, Any] = {"staleDeviceDays": None, "cutoff": None, "count": 0}
        return web.json_response({**report, "deviceIds": [], "truncated": False})
    cutoff = stale_cutoff(request.app[CLOCK].wall(), days)
    pool = request.app[PG_POOL]
    ids = await stale_candidates(pool, principal.tenant_id, cutoff, REPORT_MAX_IDS + 1)
    count = (
        len(ids)
        if len(ids) <= REPORT_MAX_IDS
        else await count_stale(pool, principal.tenant_id, cutoff)
    )
    return web.json_response(
        {
            "staleDeviceDays": days,
            "cutoff": rfc3339(cutoff),
            "count": count,
            "deviceIds": ids[:REPORT_MAX_IDS],
            "truncated": len(ids) > REPORT_MAX_IDS,
        }
    )
