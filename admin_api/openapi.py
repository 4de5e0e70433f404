"""The OpenAPI 3.1 document of the admin API, ``/openapi.json``.

The document is built from the table of :mod:`admin_api.operations` and the schemas of
:mod:`admin_api.schemas`; a test checks that it names exactly the routes the app serves.
``/docs`` (:mod:`admin_api.explorer`) shows it in Swagger UI.
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from admin_api.auth import SCOPES
from admin_api.bulk import BULK_REQUEST, BULK_RESULT
from admin_api.operations import OPERATIONS, PARAMETERS, Operation
from admin_api.schemas import REQUEST_SCHEMAS, RESPONSE_SCHEMAS
from admin_api.webhook_operations import WEBHOOK_OPERATIONS, WEBHOOK_PARAMETERS
from admin_api.webhook_schemas import WEBHOOK_REQUEST_SCHEMAS, WEBHOOK_RESPONSE_SCHEMAS

__all__ = ["build_document", "openapi_json"]

_ERRORS: Final = {
    400: "Malformed request: not valid HTTP, or malformed JSON or query parameters",
    401: "Missing or invalid credentials",
    403: "Wrong tenant, missing scope, or (connect) a blocked or disabled device",
    404: "Unknown resource (also: a tenant id of a form no tenant can have)",
    409: "Conflict with the resource's state",
    413: "Request body too large",
    415: "Request body is not application/json",
    422: "Well-formed but invalid values; `errors` names each bad field",
    431: "A request line or header field is too long",
    500: "Unexpected error (no details are disclosed)",
    503: "A store or the identity provider is unavailable",
}
_AUTH_ERRORS: Final = (401, 403)
# The HTTP layer answers these before any route is chosen (admin_api.server), so every
# operation can: a request aiohttp cannot parse, a header line over the limit.
_HTTP_ERRORS: Final = (400, 431)


_EXTRA_SCHEMAS: Final[dict[str, Any]] = {
    "HistoryList": {"type": "array", "items": {"$ref": "#/components/schemas/HistoryRecord"}},
    "TokenList": {"type": "array", "items": {"$ref": "#/components/schemas/Token"}},
    "AuditList": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}},
    "Health": {
        "type": "object",
        "properties": {"status": {"type": "string"}, "checks": {"type": "object"}},
    },
    "OpenApiDocument": {"type": "object"},
    "BulkRequest": BULK_REQUEST,
    "BulkResult": BULK_RESULT,
    # The shape of every /readyz (gatekeeper/readiness.py), 200 and 503 alike.
    "Readiness": {
        "type": "object",
        "required": ["status", "checks", "reasons"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "reasons": {"type": "array", "items": {"type": "string"}},
        },
    },
}


_PARAMETERS: Final = {**PARAMETERS, **WEBHOOK_PARAMETERS}


def _operation(op: Operation) -> dict[str, Any]:
    success: dict[str, Any] = {"description": "Success"}
    if op.result is not None or op.media != "application/json":
        schema = {"$ref": f"#/components/schemas/{op.result}"} if op.result else {"type": "string"}
        success["content"] = {op.media: {"schema": schema}}
        for media in op.other_media:
            success["content"][media] = {"schema": {"type": "string"}}
    if op.headers:
        success["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in op.headers.items()
        }
    responses: dict[str, Any] = {str(op.status): success}
    # Every route under /api needs Postgres: down, hung or saturated, it answers 503; and a
    # tenant id of a form no tenant can have is 404 on every one of them (admin_api.app).
    store_errors = (503,) if op.path.startswith("/api/") else ()
    tenant_errors = (404,) if "tenantId" in op.params else ()
    errors = sorted(
        {
            *op.errors,
            *(_AUTH_ERRORS if op.scope else ()),
            *store_errors,
            *tenant_errors,
            *_HTTP_ERRORS,
            500,
        }
    )
    for status in errors:
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    if op.result == "Readiness":  # not ready is an answer of the same shape, not a problem
        responses["503"] = {
            "description": "Not ready: `reasons` says why",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}},
        }
    doc: dict[str, Any] = {
        "operationId": f"{op.method}_{op.path}".replace("/", "_")
        .replace("{", "")
        .replace("}", "")
        .replace("-", "_")
        .replace(".", "_"),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": [{"name": name, **_PARAMETERS[name]} for name in op.params],
        "responses": responses,
        "security": [{"bearerAuth": [op.scope]}]
        if op.scope
        else ([{"apiKey": []}] if "X-Api-Key" in op.params else []),
    }
    if op.body is not None:
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body}"}}
            },
        }
    return doc


def build_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in (*OPERATIONS, *WEBHOOK_OPERATIONS):
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Gatekeeper admin API",
            "version": "1.0.0",
            "description": "Devices, connections, personal access tokens, webhooks and audit "
            "log of one tenant. Errors are RFC 9457 problem documents.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                **REQUEST_SCHEMAS,
                **WEBHOOK_REQUEST_SCHEMAS,
                **RESPONSE_SCHEMAS,
                **WEBHOOK_RESPONSE_SCHEMAS,
                **_EXTRA_SCHEMAS,
            },
            "responses": {
                f"Error{status}": {"description": text, "content": problem}
                for status, text in _ERRORS.items()
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": f"Scopes: {', '.join(SCOPES)} (claim `scope` or `scp`)",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }


_DOCUMENT_BYTES: Final = json.dumps(build_document(), indent=2).encode()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_DOCUMENT_BYTES, content_type="application/json")
