"""The admin API under ``gatekeeper up``: the ``environment`` a connection reset hands to a
device is the proxy this very stack runs, on whatever port it was told to use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Stores
from test_admin_helpers import LOGO, SECRET

from admin_api.service import AdminService
from gatekeeper.runtime.admin_tokens import mint_token
from gatekeeper.runtime.embedded import free_port
from gatekeeper.runtime.up import run_stack
from gatekeeper.settings import Settings


async def _reset_environment(settings: Settings, **overrides: Any) -> str:
    """Run the stack, create a device, reset its connection; the ``environment`` returned."""
    settings = settings.replace(**overrides)
    services: list[AdminService] = []
    found: list[str] = []

    def admin(given: Settings) -> AdminService:
        services.append(AdminService(given))
        return services[-1]

    async def until() -> None:  # the stack runs until this returns
        base = f"http://127.0.0.1:{services[0].port}/api/t1/devices"
        token = mint_token(settings, "t1", ["Device.Write"])
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(
                base, json={"type": "CrewCheck", "settings": {"logoUrl": LOGO}}
            ) as response:
                assert response.status == 201, await response.text()
                device = (await response.json())["deviceId"]
            async with session.post(f"{base}/{device}/connections/reset") as response:
                assert response.status == 200, await response.text()
                found.append((await response.json())["environment"])
            if found[0].startswith("https://edge.example.com"):
                return
            # The URL reaches the proxy: it forwards to the demo upstream.
            async with session.get(
                f"{found[0]}/api/t1/ping", headers={"X-Device-Id": device}
            ) as response:
                assert response.status == 200

    await run_stack(settings, demo_upstream=True, until=until, admin=admin)
    return found[0]


@pytest.fixture
def stack_settings(stores: Stores, tmp_path: Path) -> Settings:
    return Settings(
        database_url=stores.pg_url,
        redis_url=stores.redis_url,
        data_dir=tmp_path,
        jwt_secret=SECRET,
        admin_port=0,
        metrics_port=0,
    )


async def test_environment_follows_the_proxy_port(stack_settings: Settings) -> None:
    port = free_port()
    assert await _reset_environment(stack_settings, proxy_port=port) == f"http://127.0.0.1:{port}"


async def test_environment_names_the_port_chosen_for_port_zero(stack_settings: Settings) -> None:
    environment = await _reset_environment(stack_settings, proxy_port=0)
    assert environment.startswith("http://127.0.0.1:") and not environment.endswith(":0")


async def test_a_configured_environment_is_kept(stack_settings: Settings) -> None:
    environment = await _reset_environment(
        stack_settings, proxy_port=free_port(), environment_url="https://edge.example.com"
    )
    assert environment == "https://edge.example.com"
