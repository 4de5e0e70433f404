"""The admin API application: routes, middlewares and the resources handlers share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import asyncpg
from aiohttp import web

from admin_api import (
    bulk,
    connections,
    devices,
    explorer,
    listing,
    openapi,
    ops,
    tenant_settings,
    tokens,
    webhooks,
)
from admin_api.audit import list_audit
from admin_api.auth import VERIFIER, TokenVerifier
from admin_api.console import setup_console
from admin_api.context import CLOCK, PG_POOL, REDIS, SETTINGS
from admin_api.edgesync import EDGE_SYNC, EdgeSync
from admin_api.errors import Handler, Problem, problem_middleware
from admin_api.metrics import METRICS, AdminMetrics, metrics_handler, metrics_middleware
from admin_api.readreplica import READ_POOL, ReadPool
from admin_api.server import MAX_FIELD_BYTES
from gatekeeper.domain.identity import TENANT_ID_RULE, valid_tenant_id
from gatekeeper.settings import Settings
from gatekeeper.store.clients import RedisClient
from gatekeeper.types import SYSTEM_CLOCK, Clock

__all__ = ["MAX_BODY_BYTES", "create_app", "tenant_middleware"]

# Admin bodies are small JSON documents; anything larger is refused with 413 before parsing.
MAX_BODY_BYTES: Final = 64 * 1024

_DEV = "/api/{tenantId}/devices/{deviceId}"
_HOOK = "/api/{tenantId}/webhooks/{webhookId}"


@web.middleware
async def tenant_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404 for a ``{tenantId}`` the edge would refuse (upper case, too long, ...): no tenant of
    that name can exist, so no token, device or key of it can either. Checked before the token,
    as an unknown route is, so the answer is the same with or without credentials."""
    tenant = request.match_info.get("tenantId")
    if tenant is not None and not valid_tenant_id(tenant):
        raise Problem(404, f"No such tenant: {TENANT_ID_RULE}", type_="unknown-tenant")
    return await handler(request)


def _routes() -> list[web.RouteDef]:
    return [
        web.get("/api/{tenantId}/devices", listing.list_devices),
        web.post("/api/{tenantId}/devices", devices.create_device),
        web.post("/api/{tenantId}/devices/bulk-block", bulk.bulk_block),
        web.post("/api/{tenantId}/devices/bulk-unblock", bulk.bulk_unblock),
        web.post("/api/{tenantId}/devices/bulk-delete", bulk.bulk_delete),
        web.get(_DEV, devices.get_device),
        web.put(_DEV, devices.update_device),
        web.delete(_DEV, devices.delete_device),
        web.post(_DEV + "/block", devices.block_device),
        web.post(_DEV + "/unblock", devices.unblock_device),
        web.post(_DEV + "/conflict/clear", devices.clear_conflict),
        web.get(_DEV + "/history", devices.device_history),
        web.post(_DEV + "/connect", connections.connect_device),
        web.post(_DEV + "/connections/reset", connections.reset_connection),
        web.post("/api/{tenantId}/tokens", tokens.create_token),
        web.get("/api/{tenantId}/tokens", tokens.list_tokens),
        web.delete("/api/{tenantId}/tokens/{tokenId}", tokens.revoke_token),
        web.post("/api/{tenantId}/webhooks", webhooks.create_webhook),
        web.get("/api/{tenantId}/webhooks", webhooks.list_webhooks),
        web.get(_HOOK, webhooks.get_webhook),
        web.patch(_HOOK, webhooks.update_webhook),
        web.delete(_HOOK, webhooks.delete_webhook),
        web.get(_HOOK + "/deliveries", webhooks.list_deliveries),
        web.post(_HOOK + "/test", webhooks.send_test_event),
        web.post(_HOOK + "/secret/reset", webhooks.reset_secret),
        web.get("/api/{tenantId}/audit", list_audit),
        web.get("/api/{tenantId}/settings", tenant_settings.get_settings),
        web.put("/api/{tenantId}/settings", tenant_settings.put_settings),
        web.get("/api/{tenantId}/settings/stale-report", tenant_settings.stale_report),
        web.get("/openapi.json", openapi.openapi_json),
        web.get("/docs", explorer.docs_page),
        web.get("/docs/assets/{asset}", explorer.asset),
        web.get("/metrics", metrics_handler),
        web.get("/healthz", ops.healthz),
        web.get("/readyz", ops.readyz),
    ]


async def _edge_sync_ctx(app: web.Application) -> AsyncIterator[None]:
    """The background reconciler that repairs the edge view after a failed Redis write."""
    edge = app[EDGE_SYNC]
    edge.start()
    yield
    await edge.close()


def create_app(
    settings: Settings,
    pool: asyncpg.Pool,
    redis: RedisClient,
    *,
    read_pool: asyncpg.Pool | None = None,
    verifier: TokenVerifier | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> web.Application:
    """The admin application. ``pool`` and ``redis`` belong to the caller, who closes them, as
    does ``read_pool`` (a read-only replica for the device list and export; None: ``pool``);
    ``verifier`` replaces the one built from ``settings``, ``clock`` the system's (tests).
    Serve it with :class:`admin_api.server.AdminRunner`."""
    app = web.Application(
        middlewares=[metrics_middleware, problem_middleware, tenant_middleware],
        client_max_size=MAX_BODY_BYTES,
        handler_args={"max_field_size": MAX_FIELD_BYTES},
    )
    metrics = AdminMetrics()
    app[SETTINGS] = settings
    app[PG_POOL] = pool
    app[READ_POOL] = ReadPool(read_pool or pool, replica=read_pool is not None)
    app[REDIS] = redis
    app[METRICS] = metrics
    app[CLOCK] = clock
    app[VERIFIER] = verifier or TokenVerifier(settings)
    app[EDGE_SYNC] = EdgeSync(pool, redis, metrics)
    app.cleanup_ctx.append(_edge_sync_ctx)
    app.on_response_prepare.append(_server_header)
    app.add_routes(_routes())
    setup_console(app)
    return app


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """No versions in ``Server`` (aiohttp's default names Python's and its own): they only help
    someone match the service against known vulnerabilities."""
    response.headers["Server"] = "gatekeeper"
