"""The console end to end in headless Chromium (Debian's, driven by Playwright): a real admin
app and a real proxy on the session's Postgres and Valkey, devices that registered through the
proxy, and what an admin does in the browser. Also: axe-core (0 serious or critical
violations), the 375 px layout, and the screenshots docs/console.md shows.

Chromium missing is a failure, not a skip: CI installs it (.ci/run).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from axe_playwright_python.async_playwright import Axe
from conftest import Stores
from oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider
from playwright.async_api import Browser, Page, async_playwright, expect
from test_admin_helpers import SECRET, Api, admin_settings, running_api
from webhook_rig import create_webhook, drop_webhooks

from admin_api.service import AdminService
from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.up import run_stack
from gatekeeper.settings import Settings

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS: Final = Path(__file__).resolve().parent.parent / "docs" / "console"
WIDTHS: Final = (1280, 375)

EdgeFactory = Callable[..., Awaitable[EdgeServer]]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    yield opened
    await context.close()


def _base(api: Api) -> str:
    return str(api.client.make_url("")).rstrip("/")


async def _through_proxy(
    edge: EdgeServer, tenant: str, device_id: str, version: str = "1.0", **headers: str
) -> int:
    sent = {
        "X-Device-Id": device_id,
        "X-App-Name": "CrewApp",
        "X-App-Version": version,
        "X-OS-Name": "Android",
        "X-OS-Version": "14",
        "X-Device-Manufacturer": "Acme",
        "X-Device-Model": "X1",
        **headers,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/things", headers=sent) as r,
    ):
        await r.read()
        return r.status


async def _registered(api: Api, device_id: str, **expected: Any) -> None:
    """Wait for the recorder's flush to show ``device_id`` with ``expected`` field values."""
    for _ in range(100):
        response = await api.call("GET", api.device_path(device_id))
        if response.status == 200:
            device = await response.json()
            if all(device[k] == v for k, v in expected.items()):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{device_id} not recorded with {expected}")


async def _sign_in(page: Page, api: Api, **token_args: Any) -> None:
    await page.goto(_base(api) + "/console/")
    await page.get_by_label("Access token").fill(api.token(**token_args))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="API devices")).to_be_visible()


async def _axe_serious(page: Page) -> list[str]:
    result = await Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']}"
        for v in result.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def _check_layouts(page: Page, name: str) -> None:
    """At each width: no serious axe finding, no horizontal scroll; a screenshot for the docs."""
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        assert await _axe_serious(page) == [], f"{name} at {width} px"
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} scrolls sideways at {width} px"
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 900})


async def test_an_admin_blocks_a_device_the_proxy_then_denies(
    page: Page, api: Api, edge_factory: EdgeFactory
) -> None:
    edge = await edge_factory()
    for device_id in ("tablet-7", "kiosk-2", "phone-3"):
        assert await _through_proxy(edge, api.tenant, device_id) == 200
    await _registered(api, "phone-3", application="CrewApp")
    await _sign_in(page, api)
    table = page.get_by_role("table")
    for header in ("Name", "Application", "Manufacturer", "Model", "Last activity"):
        await expect(table.get_by_role("columnheader", name=header)).to_be_visible()
    await expect(table.get_by_role("row")).to_have_count(4)

    await page.get_by_label("Search").fill("kiosk")
    await page.get_by_role("button", name="Apply").click()
    await expect(table.get_by_role("row")).to_have_count(2)
    await page.get_by_role("link", name="kiosk-2").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("kiosk-2")

    await page.get_by_label("Name", exact=True).fill("Front desk kiosk")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Front desk kiosk")

    await page.get_by_role("button", name="Block", exact=True).click()
    await page.get_by_label("Reason").fill("reported stolen")
    await page.get_by_role("button", name="Block device").click()
    await expect(page.get_by_text("Blocked: reported stolen")).to_be_visible()
    assert await _through_proxy(edge, api.tenant, "kiosk-2") == 403
    assert await _through_proxy(edge, api.tenant, "tablet-7") == 200

    await page.get_by_role("link", name="Devices", exact=True).click()
    await page.get_by_label("Blocked").select_option(label="Only blocked")
    await page.get_by_role("button", name="Apply").click()
    await expect(table.get_by_role("row")).to_have_count(2)
    await expect(table.get_by_text("Front desk kiosk")).to_be_visible()
    await expect(table.get_by_text("Blocked", exact=True)).to_be_visible()

    await table.get_by_role("link", name="Front desk kiosk").click()
    await page.get_by_role("button", name="Unblock").click()
    await expect(page.get_by_role("button", name="Block", exact=True)).to_be_visible()
    assert await _through_proxy(edge, api.tenant, "kiosk-2") == 200

    # A new application version, seen by the proxy, lands in the history as before -> after.
    assert await _through_proxy(edge, api.tenant, "kiosk-2", version="1.1") == 200
    await _registered(api, "kiosk-2", applicationVersion="1.1")
    await page.reload()
    history = page.get_by_role("region", name="History")
    await expect(history.get_by_text("Application version: 1.0 → 1.1")).to_be_visible()


# A readable tenant in the screenshots; no other test uses it.
@pytest.mark.parametrize("tenant", ["acme-corp"])
async def test_pages_pass_axe_and_fit_375_px(
    page: Page, api: Api, edge_factory: EdgeFactory, pg_pool: asyncpg.Pool
) -> None:
    edge = await edge_factory()
    for n, device_id in enumerate(("gate-north-entrance-0001", "gate-south", "handheld-12")):
        assert await _through_proxy(edge, api.tenant, device_id, version=f"2.{n}") == 200
    await _registered(api, "handheld-12", applicationVersion="2.2")
    # Something for the screenshots to show: a custom name, an upgrade in the history, a block.
    await api.call("PUT", api.device_path("handheld-12"), json={"name": "Crew handheld 12"})
    assert await _through_proxy(edge, api.tenant, "gate-south", version="2.5") == 200
    await _registered(api, "gate-south", applicationVersion="2.5")
    await api.call("POST", api.device_path("gate-south", "/block"), json={"reason": "lost"})
    await page.goto(_base(api) + "/console/")
    await _check_layouts(page, "signin")
    await _sign_in(page, api)
    await _check_layouts(page, "devices")
    await page.set_viewport_size({"width": 375, "height": 900})
    await expect(page.get_by_role("columnheader", name="Manufacturer")).to_be_hidden()
    await expect(page.get_by_role("columnheader", name="Model")).to_be_hidden()
    await expect(page.get_by_role("columnheader", name="Last activity")).to_be_visible()
    await page.set_viewport_size({"width": 1280, "height": 900})
    await page.get_by_role("link", name="gate-south").click()
    await _check_layouts(page, "device")
    await page.get_by_role("link", name="Tokens").click()
    await page.get_by_label("Token name").fill("deploy pipeline")
    await page.get_by_role("button", name="Create token").click()
    secret = page.get_by_label(re.compile("shown once"))
    await expect(secret).to_have_value(re.compile("^gkp_"))
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await page.get_by_role("button", name="Copy").click()
    await expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == await secret.input_value()
    await _check_layouts(page, "tokens")
    await page.get_by_role("button", name="Revoke deploy pipeline").click()
    await expect(page.get_by_role("cell", name="Revoked")).to_be_visible()
    # Webhooks: one made with SQL (its host need not resolve here), its secret reset in the page.
    hook = "https://hooks.acme-corp.example/gatekeeper"
    await create_webhook(pg_pool, api.tenant, hook, "whsec_unused", ("device.blocked", "key.reset"))
    try:
        await page.get_by_role("link", name="Webhooks").click()
        await expect(page.get_by_role("link", name=hook)).to_be_visible()
        await _check_layouts(page, "webhooks")
        await page.get_by_role("link", name=hook).click()
        await page.get_by_label("Keep the old secret signing").select_option(label="1 hour")
        await page.get_by_role("button", name="Reset secret").click()
        await expect(page.get_by_label(re.compile("shown once"))).to_have_value(
            re.compile("^whsec_")
        )
        await _check_layouts(page, "webhook")
    finally:
        await drop_webhooks(pg_pool, api.tenant)
    await page.get_by_role("link", name="Audit").click()
    await expect(page.get_by_role("cell", name="token.revoke")).to_be_visible()
    await _check_layouts(page, "audit")


async def test_keyboard_sign_in_tenants_csrf_and_sign_out(page: Page, api: Api) -> None:
    await page.goto(_base(api) + "/console/")
    await page.keyboard.press("Tab")  # the skip link first
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Access token")).to_be_focused()
    await page.keyboard.type(api.token())
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="API devices")).to_be_visible()

    other = await page.goto(_base(api) + "/console/someone-else/devices")
    assert other is not None and other.status == 403
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()

    await api.create_device("csrf-target")
    await page.goto(_base(api) + "/console/" + api.tenant + "/devices/csrf-target?confirm=block")
    await page.locator("form[action$='/block'] input[name=csrf]").evaluate(
        "e => e.value = 'forged'"
    )
    await page.get_by_role("button", name="Block device").click()
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    device = await (await api.call("GET", api.device_path("csrf-target"))).json()
    assert not device["isBlocked"]

    await page.goto(_base(api) + "/console/" + api.tenant + "/devices")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Access token")).to_be_visible()
    await page.goto(_base(api) + "/console/" + api.tenant + "/devices")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()


async def test_gatekeeper_up_prints_a_ready_sign_in_link(
    page: Page, stores: Stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The link carries the token in the fragment, which no server sees; console.js posts it
    and wipes it from the address bar."""
    settings = Settings(
        database_url=stores.pg_url,
        redis_url=stores.redis_url,
        data_dir=tmp_path,
        jwt_secret=SECRET,
        admin_port=0,
        metrics_port=0,
        proxy_port=0,
    )
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    async def until() -> None:
        link = re.search(r"console   (\S+)", capsys.readouterr().out)
        assert link is not None and "/console/#token=" in link[1]
        await page.goto(link[1])
        await expect(page.get_by_role("heading", name="API devices")).to_be_visible()
        assert page.url.endswith("/console/default/devices")

    await run_stack(settings, demo_upstream=True, until=until, admin=AdminService)
    assert [url for url in requested if "token=" in url] == []


async def test_single_sign_on_from_another_site(
    browser: Browser, stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    """The provider on another site (localhost vs 127.0.0.1): its redirect back is a
    cross-site navigation, after which the SameSite=Strict session must still work."""
    provider = OidcProvider(tenant="sso-tenant", audience="gatekeeper-admin")
    await provider.start(host_name="localhost")
    settings = admin_settings(
        stores.pg_url,
        stores.redis_url,
        jwks_url=provider.jwks_url,
        jwt_issuer=provider.issuer,
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
    )
    context = await browser.new_context()
    try:
        async with running_api(settings, pg_pool, redis_client, "sso-tenant") as api:
            page = await context.new_page()
            await page.goto(_base(api) + "/console/")
            await page.get_by_role("link", name="Sign in with single sign-on").click()
            await page.get_by_role("link", name="Continue as alice@example.com").click()
            await expect(page.get_by_role("heading", name="API devices")).to_be_visible()
            await expect(page.get_by_text("alice@example.com")).to_be_visible()
            await page.get_by_role("link", name="Tokens").click()
            await expect(page.get_by_role("heading", name="Personal access tokens")).to_be_visible()
    finally:
        await context.close()
        await provider.close()
