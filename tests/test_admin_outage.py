"""The admin API when Postgres is down or hung: a quick ``503`` with ``Retry-After``, never a 500
and never a wait of half a minute. Each test runs the real service against a private Postgres it
may stop, or freeze with SIGSTOP (a hung server: connections are accepted, nothing answers)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from conftest import Stores
from test_admin_helpers import LOGO, admin_settings

from admin_api.service import AdminService
from gatekeeper.runtime.admin_tokens import mint_token

# The longest acceptable answer: the bounds of admin_api.database add up to 7 s at worst.
_ANSWER_WITHIN = 10.0


@dataclass
class Running:
    service: AdminService
    base: str
    headers: dict[str, str]
    tenant: str


@pytest.fixture
async def running(private_stores: Stores, tenant: str) -> AsyncIterator[Running]:
    settings = admin_settings(private_stores.pg_url, private_stores.redis_url)
    service = AdminService(settings)
    await service.start()
    token = mint_token(
        settings, tenant, ["Device.Read", "Device.Write", "Token.Read", "Token.Write"]
    )
    try:
        yield Running(
            service,
            f"http://127.0.0.1:{service.port}",
            {"Authorization": f"Bearer {token}"},
            tenant,
        )
    finally:
        await service.stop()


@contextlib.contextmanager
def _frozen(stores: Stores) -> Iterator[None]:
    """Postgres hung: the postmaster and every backend stopped, their sockets still open."""
    stores.postgres.pause()
    try:
        yield
    finally:
        stores.postgres.resume()


_CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/devices/dev-1", None),
    ("GET", "/devices", None),
    ("GET", "/devices?q=dev", None),
    ("POST", "/devices/dev-1/block", {"reason": "outage"}),
    ("PUT", "/devices/dev-1", {"name": "renamed"}),
    ("POST", "/devices/dev-1/connections/reset", None),
    ("POST", "/tokens", {"name": "t"}),
    ("GET", "/audit", None),
]


async def _timed(
    session: aiohttp.ClientSession, run: Running, method: str, suffix: str, body: Any
) -> tuple[str, int, str, str | None, float]:
    started = time.monotonic()
    async with session.request(
        method, f"{run.base}/api/{run.tenant}{suffix}", json=body, headers=run.headers
    ) as response:
        await response.read()
        return (
            f"{method} {suffix}",
            response.status,
            response.content_type,
            response.headers.get("Retry-After"),
            time.monotonic() - started,
        )


async def _assert_all_unavailable(run: Running) -> None:
    timeout = aiohttp.ClientTimeout(total=_ANSWER_WITHIN * 3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Together, as callers would arrive: some find a pooled connection, some must open one.
        results = await asyncio.gather(*(_timed(session, run, *call) for call in _CALLS))
    for name, status, content_type, retry_after, took in results:
        assert status == 503, (name, status)
        assert content_type == "application/problem+json", name
        assert retry_after is not None and int(retry_after) > 0, name
        assert took < _ANSWER_WITHIN, (name, took)


async def _create_device(run: Running) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{run.base}/api/{run.tenant}/devices",
            headers=run.headers,
            json={"deviceId": "dev-1", "type": "CrewCheck", "settings": {"logoUrl": LOGO}},
        ) as response,
    ):
        assert response.status == 201, await response.text()


async def test_postgres_down_is_a_quick_503(running: Running, private_stores: Stores) -> None:
    await _create_device(running)
    private_stores.postgres.stop()
    await _assert_all_unavailable(running)


async def test_postgres_hung_is_a_503_within_the_bound(
    running: Running, private_stores: Stores
) -> None:
    await _create_device(running)
    with _frozen(private_stores):
        await _assert_all_unavailable(running)
    # Thawed, the service recovers on its own: the broken connections were dropped.
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            async with session.get(
                f"{running.base}/api/{running.tenant}/devices/dev-1", headers=running.headers
            ) as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.2)
        assert response.status == 200
