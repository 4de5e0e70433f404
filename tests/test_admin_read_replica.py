"""``database_read_url``: the admin device list and CSV export read from a read-only PostgreSQL;
everything else stays on the primary.

The "replica" is a second database on the test server, migrated and then filled differently
from the primary, reached through a role that may only SELECT: a row only it holds proves where
the list read, and a refused INSERT proves the role could not have written anything.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from conftest import Stores
from test_admin_helpers import ALL_SCOPES, LOGO, admin_settings, problem

from admin_api.service import AdminService
from gatekeeper.runtime.admin_tokens import mint_token
from gatekeeper.runtime.embedded import free_port
from gatekeeper.settings import Settings
from gatekeeper.store.migrate import migrate

ONLY_IN_REPLICA = "only-in-replica"


def _url(base: str, *, user: str, password: str, database: str) -> str:
    parts = urlsplit(base)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


@dataclass
class Replica:
    admin_url: str  # the superuser, to fill it
    read_url: str  # the read-only role


@pytest.fixture
async def replica(stores: Stores, tenant: str) -> AsyncIterator[Replica]:
    name = f"replica_{uuid.uuid4().hex[:10]}"
    role, password = f"reader_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    server = await asyncpg.connect(stores.pg_url)
    try:
        await server.execute(f"CREATE DATABASE {name}")
        await server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin_url = urlunsplit(urlsplit(stores.pg_url)._replace(path=f"/{name}"))
        await migrate(admin_url)
        db = await asyncpg.connect(admin_url)
        try:
            await db.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            await db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
            await db.execute(
                "INSERT INTO devices (tenant_id, device_id) VALUES ($1, $2)",
                tenant,
                ONLY_IN_REPLICA,
            )
        finally:
            await db.close()
        yield Replica(admin_url, _url(stores.pg_url, user=role, password=password, database=name))
    finally:
        await server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await server.execute(f"DROP ROLE IF EXISTS {role}")
        await server.close()


class Admin:
    """A running AdminService and an HTTP client acting for one tenant with every scope."""

    def __init__(self, service: AdminService, settings: Settings, tenant: str) -> None:
        self.service, self.settings, self.tenant = service, settings, tenant
        self.http = aiohttp.ClientSession(f"http://127.0.0.1:{service.port}")

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, json: Any = None
    ) -> aiohttp.ClientResponse:
        token = mint_token(self.settings, self.tenant, ALL_SCOPES, subject="tester")
        sent = {"Authorization": f"Bearer {token}", **(headers or {})}
        response = await self.http.request(method, path, headers=sent, json=json)
        await response.read()
        return response

    def devices(self, suffix: str = "") -> str:
        return f"/api/{self.tenant}/devices{suffix}"

    async def listed(self) -> set[str]:
        response = await self.call("GET", self.devices())
        assert response.status == 200, await response.text()
        return {d["deviceId"] for d in await response.json()}

    async def exported(self) -> str:
        response = await self.call("GET", self.devices(), headers={"Accept": "text/csv"})
        assert response.status == 200, await response.text()
        return await response.text()


@pytest.fixture
async def start_admin(stores: Stores, tenant: str, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Admin] = []

    async def start(read_url: str) -> Admin:
        settings = admin_settings(
            stores.pg_url, stores.redis_url, database_read_url=read_url, data_dir=tmp_path
        )
        service = AdminService(settings)
        await service.start()
        started.append(Admin(service, settings, tenant))
        return started[-1]

    yield start
    for admin in started:
        await admin.http.close()
        await admin.service.stop()


async def test_list_and_export_read_the_replica_while_writes_and_one_device_use_the_primary(
    start_admin: Any, replica: Replica, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    admin = await start_admin(replica.read_url)
    created = await admin.call(
        "POST",
        admin.devices(),
        json={"deviceId": "written", "type": "CrewCheck", "settings": {"logoUrl": LOGO}},
    )
    assert created.status == 201, await created.text()
    # The write reached the primary, and only it (the "replica" is not replicated).
    assert await pg_pool.fetchval(
        "SELECT count(*) FROM devices WHERE tenant_id = $1 AND device_id = 'written'", tenant
    )
    # The list and the export read the replica: its own row, not the primary's.
    assert await admin.listed() == {ONLY_IN_REPLICA}
    csv_text = await admin.exported()
    assert ONLY_IN_REPLICA in csv_text and "written" not in csv_text
    # One device is read from the primary: the one just written is there, the replica's not.
    assert (await admin.call("GET", admin.devices("/written"))).status == 200
    await problem(await admin.call("GET", admin.devices(f"/{ONLY_IN_REPLICA}")), 404)
    ready = await admin.call("GET", "/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {
        "postgres": True,
        "redis": True,
        "postgres_read": True,
    }


async def test_the_read_role_can_only_read(replica: Replica, tenant: str) -> None:
    """What the list runs through may not write: the role has SELECT and nothing else."""
    reader = await asyncpg.connect(replica.read_url)
    try:
        assert await reader.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1", tenant)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute(
                "INSERT INTO devices (tenant_id, device_id) VALUES ($1, 'sneaky')", tenant
            )
    finally:
        await reader.close()


async def test_a_replica_that_is_down_fails_the_list_only(start_admin: Any, tenant: str) -> None:
    down = f"postgresql://reader:secret-word@127.0.0.1:{free_port()}/gatekeeper"
    admin = await start_admin(down)  # starts: the replica is not needed to serve writes
    assert "secret-word" not in repr(admin.settings) and "secret-word" not in repr(admin.service)
    for headers in ({}, {"Accept": "text/csv"}):
        response = await admin.call("GET", admin.devices(), headers=headers)
        body = await problem(response, 503)
        assert body["type"].endswith("read-replica-unavailable")
        assert "database_read_url" in body["detail"] and "secret-word" not in body["detail"]
        assert response.headers["Retry-After"]
    created = await admin.call(
        "POST",
        admin.devices(),
        json={"deviceId": "still-written", "type": "CrewCheck", "settings": {"logoUrl": LOGO}},
    )
    assert created.status == 201, await created.text()
    assert (await admin.call("GET", admin.devices("/still-written"))).status == 200
    ready = await admin.call("GET", "/readyz")
    assert ready.status == 200  # degraded, not unready: see admin_api/ops.py
    body = await ready.json()
    assert body["checks"]["postgres_read"] is False and body["reasons"] == []


def test_the_read_url_comes_from_the_environment_and_is_masked() -> None:
    url = "postgresql://reader:hunter22@replica:5432/gatekeeper"
    settings = Settings.load(environ={"GATEKEEPER_DATABASE_READ_URL": url})
    assert settings.database_read_url == url
    assert "hunter22" not in repr(settings) and "reader:***@replica" in repr(settings)
    assert Settings.load(environ={}).database_read_url is None
