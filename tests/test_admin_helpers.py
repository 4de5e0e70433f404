"""Shared pieces of the admin API tests (no tests here): settings, tokens, a running app.

Each test file defines its own thin ``api`` fixture around :func:`running_api`, which serves
:func:`admin_api.app.create_app` on a real loopback socket against the session's real Postgres
and Valkey.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from admin_api.app import create_app
from admin_api.auth import SCOPES
from admin_api.server import AdminRunner
from gatekeeper.runtime.admin_tokens import mint_token
from gatekeeper.settings import Settings
from gatekeeper.store.clients import RedisClient

__all__ = ["ALL_SCOPES", "LOGO", "SECRET", "Api", "admin_settings", "running_api"]

SECRET = "test-admin-secret-7f3c1e9a0b6d4c2e8f1a3b5c7d9e0f12"
ALL_SCOPES = list(SCOPES)
LOGO = "https://cdn.example.com/logo.png"


def admin_settings(pg_url: str, redis_url: str, **changes: Any) -> Settings:
    return Settings(
        database_url=pg_url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        environment_url="http://edge.example.test:8080",
        admin_port=0,
    ).replace(**changes)


class Api:
    """A client of one running admin app, acting for ``tenant`` with every scope by default."""

    def __init__(
        self,
        client: TestClient[web.Request, web.Application],
        settings: Settings,
        tenant: str,
        app: web.Application,
    ) -> None:
        self.client = client
        self.settings = settings
        self.tenant = tenant
        self.app = app

    def token(
        self, tenant: str | None = None, scopes: list[str] | None = None, subject: str = "tester"
    ) -> str:
        return mint_token(
            self.settings,
            tenant or self.tenant,
            ALL_SCOPES if scopes is None else scopes,
            subject=subject,
        )

    def path(self, suffix: str = "", tenant: str | None = None) -> str:
        return f"/api/{tenant or self.tenant}{suffix}"

    def device_path(self, device_id: str, suffix: str = "") -> str:
        return self.path(f"/devices/{quote(device_id, safe='')}{suffix}")

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        scopes: list[str] | None = None,
        tenant: str | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
        auth: bool = True,
    ) -> aiohttp.ClientResponse:
        sent = dict(headers or {})
        if auth:
            sent.setdefault("Authorization", f"Bearer {self.token(tenant, scopes)}")
        response = await self.client.request(method, path, json=json, data=data, headers=sent)
        await response.read()
        return response

    async def create_device(self, device_id: str | None = None, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "CrewCheck", "settings": {"logoUrl": LOGO}, **fields}
        if device_id is not None:
            body["deviceId"] = device_id
        response = await self.call("POST", self.path("/devices"), json=body)
        assert response.status == 201, await response.text()
        created: dict[str, Any] = await response.json()
        return created


class AdminTestServer(TestServer):
    """aiohttp's test server with the admin's own runner, so tests see production's HTTP layer."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return AdminRunner(self.app, **kwargs)


@asynccontextmanager
async def running_api(
    settings: Settings, pool: asyncpg.Pool, redis: RedisClient, tenant: str, **options: Any
) -> AsyncIterator[Api]:
    app = create_app(settings, pool, redis, **options)
    async with TestClient(AdminTestServer(app)) as client:
        yield Api(client, settings, tenant, app)


async def problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """Assert ``response`` is a problem document of ``status`` and return it."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == status and body["title"] and body["type"] and body["detail"]
    return body


def fields_of(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}
