"""The table of the admin API's operations and their parameters, as the OpenAPI document
(:mod:`admin_api.openapi`) publishes them: one :class:`Operation` per route the app serves
(a test holds the two equal), and each parameter's schema, taken from the rules the server
enforces (:mod:`admin_api.schemas`, :mod:`gatekeeper.domain.identity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from admin_api.auth import DEVICE_READ, DEVICE_WRITE, TOKEN_READ, TOKEN_WRITE
from admin_api.explorer import ASSETS
from admin_api.filters import FILTER_PARAMETERS, FILTER_QUERY_NAMES
from admin_api.schemas import API_KEY, CURSOR, SEARCH_TEXT, STALE_DAYS_MAX, TIMESTAMP_PARAM
from admin_api.validation import DEFAULT_LIMIT, MAX_LIMIT
from gatekeeper.domain.identity import DEVICE_ID_PATTERN, TENANT_ID_PATTERN

__all__ = ["OPERATIONS", "PARAMETERS", "Operation"]

_BODY_ERRORS: Final = (400, 413, 415, 422)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    scope: str | None = None  # None: no bearer token (ops routes, device connect)
    params: tuple[str, ...] = ()
    body: str | None = None
    body_required: bool = True
    status: int = 200
    result: str | None = None  # a component schema name, or None for no body
    media: str = "application/json"
    other_media: tuple[str, ...] = ()  # more content types of the success answer (strings)
    errors: tuple[int, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


_DEV = "/api/{tenantId}/devices/{deviceId}"
_LINK = {"Link": 'RFC 8288 link to the next page: `<url>; rel="next"`, absent on the last page'}

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "get",
        "/api/{tenantId}/devices",
        "List devices (most recently active first; "
        "never-active last; ties by deviceId descending), filtered by every criterion given "
        "(the bulk routes' filter, but deviceIds). `Accept: text/csv` streams CSV: "
        "the whole list, or one page when `limit` is given.",
        "devices",
        DEVICE_READ,
        ("tenantId", *FILTER_QUERY_NAMES, "limit", "cursor"),
        result="DeviceList",
        other_media=("text/csv",),
        errors=(400,),
        headers=_LINK,
    ),
    Operation(
        "post",
        "/api/{tenantId}/devices",
        "Create a device (deviceId optional; generated when absent)",
        "devices",
        DEVICE_WRITE,
        ("tenantId",),
        body="CreateDevice",
        status=201,
        result="Device",
        errors=(*_BODY_ERRORS, 409),
        headers={"Location": "URL of the new device"},
    ),
    *(
        Operation(
            "post",
            f"/api/{{tenantId}}/devices/bulk-{action}",
            f"{summary} every device the filter matches; `dryRun` only counts. Answers how many"
            " matched and how many changed",
            "devices",
            DEVICE_WRITE,
            ("tenantId",),
            body="BulkRequest",
            result="BulkResult",
            errors=_BODY_ERRORS,
        )
        for action, summary in (
            ("block", "Block (one transaction, one announcement to the edge)"),
            ("unblock", "Unblock"),
            ("delete", "Delete (blocked devices never; their keys revoked)"),
        )
    ),
    Operation(
        "get",
        _DEV,
        "Read a device",
        "devices",
        DEVICE_READ,
        ("tenantId", "deviceId"),
        result="Device",
        errors=(404,),
    ),
    Operation(
        "put",
        _DEV,
        "Update name, description and/or isEnabled (fields not given are kept)",
        "devices",
        DEVICE_WRITE,
        ("tenantId", "deviceId"),
        body="UpdateDevice",
        result="Device",
        errors=(*_BODY_ERRORS, 404),
    ),
    Operation(
        "delete",
        _DEV,
        "Delete a device and revoke its API keys",
        "devices",
        DEVICE_WRITE,
        ("tenantId", "deviceId"),
        status=204,
        errors=(404, 409),
    ),
    Operation(
        "post",
        _DEV + "/block",
        "Block a device (idempotent). `mode`: `enforce` (default) answers the device 403;"
        ' `shadow` forwards its requests, counted as `outcome="shadow_blocked"`. Blocking'
        " again with the other mode switches it",
        "devices",
        DEVICE_WRITE,
        ("tenantId", "deviceId"),
        body="BlockRequest",
        body_required=False,
        result="Device",
        errors=(*_BODY_ERRORS, 404),
    ),
    Operation(
        "post",
        _DEV + "/unblock",
        "Unblock a device (idempotent)",
        "devices",
        DEVICE_WRITE,
        ("tenantId", "deviceId"),
        result="Device",
        errors=(*_BODY_ERRORS, 404),
    ),
    Operation(
        "post",
        _DEV + "/conflict/clear",
        "Acknowledge a clone conflict: `conflictAt` back to null (the history keeps its flagged "
        "records; a later flip back sets it again). Idempotent",
        "devices",
        DEVICE_WRITE,
        ("tenantId", "deviceId"),
        result="Device",
        errors=(*_BODY_ERRORS, 404),
    ),
    Operation(
        "get",
        _DEV + "/history",
        "Attribute changes, newest first",
        "devices",
        DEVICE_READ,
        ("tenantId", "deviceId", "limit", "cursor"),
        result="HistoryList",
        errors=(400, 404),
        headers=_LINK,
    ),
    Operation(
        "post",
        _DEV + "/connect",
        "A device connects with its API key and gets its settings",
        "connections",
        None,
        ("tenantId", "deviceId", "X-Api-Key"),
        result="ConnectResult",
        errors=(*_BODY_ERRORS, 401, 403),
    ),
    Operation(
        "post",
        _DEV + "/connections/reset",
        "Issue a new API key; old keys are revoked now or after graceSeconds",
        "connections",
        DEVICE_WRITE,
        ("tenantId", "deviceId"),
        body="ResetRequest",
        body_required=False,
        result="ConnectionReset",
        errors=(*_BODY_ERRORS, 404, 503),
    ),
    Operation(
        "post",
        "/api/{tenantId}/tokens",
        "Create a personal access token (the secret is shown only in this response)",
        "tokens",
        TOKEN_WRITE,
        ("tenantId",),
        body="CreateToken",
        status=201,
        result="CreatedToken",
        errors=(*_BODY_ERRORS, 503),
        headers={"Location": "URL of the new token"},
    ),
    Operation(
        "get",
        "/api/{tenantId}/tokens",
        "List personal access tokens (no secrets)",
        "tokens",
        TOKEN_READ,
        ("tenantId",),
        result="TokenList",
        errors=(400,),
    ),
    Operation(
        "delete",
        "/api/{tenantId}/tokens/{tokenId}",
        "Revoke a personal access token (idempotent)",
        "tokens",
        TOKEN_WRITE,
        ("tenantId", "tokenId"),
        status=204,
        errors=(404,),
    ),
    Operation(
        "get",
        "/api/{tenantId}/audit",
        "Audit log, newest first; filtered by `targetId`, `actor`, `action` (exact) and a time"
        " range (`since` inclusive, `until` exclusive)",
        "audit",
        DEVICE_READ,
        ("tenantId", "targetId", "actor", "action", "since", "until", "limit", "cursor"),
        result="AuditList",
        errors=(400,),
        headers=_LINK,
    ),
    Operation(
        "get",
        "/api/{tenantId}/settings",
        "The tenant's settings (each null when never set: its default)",
        "settings",
        DEVICE_READ,
        ("tenantId",),
        result="TenantSettingsResult",
        errors=(400,),
    ),
    Operation(
        "put",
        "/api/{tenantId}/settings",
        "Replace the tenant's settings. `staleDeviceDays`: a daily job deletes unblocked devices"
        " inactive longer than that (never active: since created), revoking their keys",
        "settings",
        DEVICE_WRITE,
        ("tenantId",),
        body="TenantSettings",
        result="TenantSettingsResult",
        errors=_BODY_ERRORS,
    ),
    Operation(
        "get",
        "/api/{tenantId}/settings/stale-report",
        "What the stale-device job would delete now, for the tenant's `staleDeviceDays` or the"
        " one given (a preview); at most 1,000 ids, in the job's order",
        "settings",
        DEVICE_READ,
        ("tenantId", "staleDeviceDays"),
        result="StaleReport",
        errors=(400,),
    ),
    Operation("get", "/openapi.json", "This document", "meta", result="OpenApiDocument"),
    Operation(
        "get",
        "/docs",
        "The API explorer: this document in Swagger UI, with bearer auth and try-it-out"
        " (served by this server, no CDN)",
        "meta",
        media="text/html",
    ),
    Operation(
        "get",
        "/docs/assets/{asset}",
        "A file of the API explorer",
        "meta",
        params=("asset",),
        media="text/javascript",
        other_media=("text/css", "image/png"),
        errors=(404,),
    ),
    Operation("get", "/metrics", "Prometheus metrics", "ops", media="text/plain"),
    Operation("get", "/healthz", "Liveness", "ops", result="Health"),
    Operation(
        "get",
        "/readyz",
        "Readiness: Postgres and Redis reachable",
        "ops",
        result="Readiness",
    ),
)

PARAMETERS: Final[dict[str, dict[str, Any]]] = {
    "tenantId": {
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": TENANT_ID_PATTERN},
        "description": "Must equal the token's tenant claim; any other form is 404",
    },
    "deviceId": {
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN},
    },
    "tokenId": {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
    "asset": {"in": "path", "required": True, "schema": {"type": "string", "enum": sorted(ASSETS)}},
    "q": {
        "in": "query",
        "schema": SEARCH_TEXT,
        "description": "Case-insensitive substring of name or deviceId",
    },
    "blocked": {
        "in": "query",
        "schema": {"type": "string", "enum": ["all", "hide", "only"], "default": "all"},
    },
    "limit": {
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    "cursor": {"in": "query", "schema": CURSOR, "description": CURSOR["description"]},
    "targetId": {
        "in": "query",
        "schema": SEARCH_TEXT,
        "description": "The changed device or token",
    },
    "actor": {"in": "query", "schema": SEARCH_TEXT, "description": "Who made the change"},
    "action": {"in": "query", "schema": SEARCH_TEXT, "description": "For example device.block"},
    "since": {"in": "query", "schema": TIMESTAMP_PARAM, "description": "At or after"},
    "until": {"in": "query", "schema": TIMESTAMP_PARAM, "description": "Before"},
    **FILTER_PARAMETERS,
    "staleDeviceDays": {
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": STALE_DAYS_MAX},
        "description": "Report for this many days instead of the tenant's setting",
    },
    "X-Api-Key": {
        "in": "header",
        "required": True,
        "schema": API_KEY,
        "description": "The device's API key",
    },
}
