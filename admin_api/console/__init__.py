"""The web console at ``/console/``: server-rendered pages that act through the admin API's own
routes (docs/console.md, docs/decisions.md "The console")."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from admin_api.console import admin_pages, bulk_pages, device_pages, oidc, signin, webhook_pages
from admin_api.console.access import SESSIONS, SSO
from admin_api.console.apicall import API_CLIENT, ApiClient
from admin_api.console.render import STATIC_DIR, TEMPLATES, console_headers, create_environment
from admin_api.console.session import SessionStore
from admin_api.context import REDIS, SETTINGS

__all__ = ["setup_console"]

_TENANT = "/console/{tenant}"
_DEVICE = _TENANT + "/devices/{deviceId}"
_HOOK = _TENANT + "/webhooks/{webhookId}"


async def _redirect_to_console(_request: web.Request) -> web.Response:
    return web.Response(status=308, headers={"Location": "/console/"})


def _routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/console", _redirect_to_console),
        web.get("/console/", signin.sign_in_page),
        web.post("/console/sign-in", signin.sign_in),
        web.post("/console/sign-out", signin.sign_out),
        web.get(_TENANT + "/devices", device_pages.devices_page),
        web.get(_TENANT + "/devices.csv", device_pages.devices_csv),
        web.post(_TENANT + "/devices/bulk-block", bulk_pages.bulk_block),
        web.post(_TENANT + "/devices/bulk-unblock", bulk_pages.bulk_unblock),
        web.get(_DEVICE, device_pages.device_page),
        web.post(_DEVICE + "/rename", device_pages.rename),
        web.post(_DEVICE + "/block", device_pages.block),
        web.post(_DEVICE + "/unblock", device_pages.unblock),
        web.post(_DEVICE + "/enable", device_pages.enable),
        web.post(_DEVICE + "/disable", device_pages.disable),
        web.post(_DEVICE + "/reset-key", device_pages.reset_key),
        web.post(_DEVICE + "/clear-conflict", device_pages.clear_conflict),
        web.get(_TENANT + "/tokens", admin_pages.tokens_page),
        web.post(_TENANT + "/tokens", admin_pages.create_token),
        web.post(_TENANT + "/tokens/{tokenId}/revoke", admin_pages.revoke_token),
        web.get(_TENANT + "/audit", admin_pages.audit_page),
        web.get(_TENANT + "/webhooks", webhook_pages.webhooks_page),
        web.post(_TENANT + "/webhooks", webhook_pages.create_webhook),
        web.get(_HOOK, webhook_pages.webhook_page),
        web.post(_HOOK + "/pause", webhook_pages.pause_webhook),
        web.post(_HOOK + "/enable", webhook_pages.enable_webhook),
        web.post(_HOOK + "/test", webhook_pages.test_webhook),
        web.post(_HOOK + "/reset-secret", webhook_pages.reset_secret),
        web.post(_HOOK + "/delete", webhook_pages.delete_webhook),
        web.static("/console/static", STATIC_DIR, append_version=False),
    ]


async def _api_client_ctx(app: web.Application) -> AsyncIterator[None]:
    client = app[API_CLIENT]
    await client.open()
    yield
    await client.close()


def setup_console(app: web.Application) -> None:
    """Add the console's routes, resources and response headers to the admin ``app`` (which
    already holds its settings and Redis client)."""
    app[TEMPLATES] = create_environment()
    app[SESSIONS] = SessionStore(app[REDIS])
    app[API_CLIENT] = ApiClient(app[SETTINGS])
    app.cleanup_ctx.append(_api_client_ctx)
    app.on_response_prepare.append(console_headers)
    app.add_routes(_routes())
    settings = app[SETTINGS]
    app[SSO] = settings.oidc_issuer is not None
    if settings.oidc_issuer is not None:
        app[oidc.OIDC] = oidc.OidcClient(settings, app[REDIS])
        app.add_routes(
            [
                web.get("/console/oidc/start", oidc.oidc_start),
                web.get("/console/oidc/callback", oidc.oidc_callback),
            ]
        )
