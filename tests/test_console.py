"""The web console against a real admin app, Postgres and Valkey: sessions, CSRF, headers,
tenant isolation, and that each console action has the API's effect (and audit)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from console_rig import Console
from test_admin_helpers import Api, admin_settings, running_api

from admin_api.auth import DEVICE_READ, DEVICE_WRITE
from admin_api.console.session import COOKIE
from conftest import Stores
from gatekeeper.domain import edgeview


@pytest.fixture
async def api(
    stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> AsyncIterator[Api]:
    settings = admin_settings(stores.pg_url, stores.redis_url)
    async with running_api(settings, pg_pool, redis_client, tenant) as client:
        yield client


@pytest.fixture
async def console(api: Api) -> Console:
    console = Console(api)
    response = await console.sign_in()
    assert response.status == 303
    return console


async def test_sign_in_page_has_the_named_controls(api: Api) -> None:
    html = await Console(api).text("/console/")
    assert '<label for="token">Access token</label>' in html
    assert '<button type="submit">Sign in</button>' in html


async def test_sign_in_sets_a_strict_session_cookie(api: Api, redis_client: aioredis.Redis) -> None:
    response = await Console(api).sign_in()
    assert response.status == 303
    assert response.headers["Location"] == f"/console/{api.tenant}/devices"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure is set when served over TLS
    # The session lives in Redis as long as the token (one hour), under a digest of the id.
    session_id = response.cookies[COOKIE].value
    key = "gatekeeper:console:session:" + hashlib.sha256(session_id.encode()).hexdigest()
    assert 3500 < await redis_client.ttl(key) <= 3600
    assert not [k async for k in redis_client.scan_iter(f"*{session_id}*")]


@pytest.mark.parametrize(
    ("token", "says"),
    [("not-a-token", "malformed"), ("", "Enter an access token")],
)
async def test_sign_in_refuses_a_bad_token(api: Api, token: str, says: str) -> None:
    response = await api.client.post("/console/sign-in", data={"token": token})
    assert response.status in (400, 401)
    html = await response.text()
    assert "The access token was not accepted" in html or says in html
    assert says in html
    assert "Set-Cookie" not in response.headers or "Max-Age=0" in response.headers["Set-Cookie"]


async def test_login_from_another_site_is_refused(api: Api) -> None:
    response = await api.client.post(
        "/console/sign-in",
        data={"token": api.token()},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        allow_redirects=False,
    )
    assert response.status == 403 and COOKIE not in response.cookies


async def test_console_responses_carry_a_strict_csp(console: Console) -> None:
    for path in ("/console/", console.url("/devices"), "/console/static/console.css"):
        response = await console.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert (await console.get(console.url("/devices"))).headers["Cache-Control"] == "no-store"
    # Scoped to the console: the API and the /docs explorer keep their own headers.
    docs = await console.get("/docs")
    assert docs.status == 200
    assert "form-action 'self'" not in docs.headers.get("Content-Security-Policy", "")


async def test_pages_without_a_session_go_to_sign_in(api: Api) -> None:
    response = await Console(api).get(f"/console/{api.tenant}/devices")
    assert response.status == 303 and response.headers["Location"] == "/console/"


async def test_another_tenants_url_is_not_allowed(console: Console, api: Api) -> None:
    await api.create_device("mine-1", name="Mine")
    other = "other-" + api.tenant[:20]
    for path in (console.url("/devices", other), console.url("/devices/mine-1", other)):
        html = await console.text(path, status=403)
        assert "Not allowed" in html and "Mine" not in html
    refused = await console.post(console.url("/devices/mine-1/block", other), {"reason": "x"})
    assert refused.status == 403
    device = await api.call("GET", api.device_path("mine-1"))
    assert not (await device.json())["isBlocked"]


async def test_forms_without_the_csrf_token_are_refused(console: Console, api: Api) -> None:
    await api.create_device("csrf-1")
    for csrf in ("", "forged"):
        response = await console.post(console.device_url("csrf-1", "/block"), csrf=csrf)
        assert response.status == 403
        assert "not sent from this console" in await response.text()
    cross = await console.post(
        console.device_url("csrf-1", "/block"), headers={"Origin": "https://evil.example"}
    )
    assert cross.status == 403
    device = await api.call("GET", api.device_path("csrf-1"))
    assert not (await device.json())["isBlocked"]


async def test_sign_out_ends_the_session_everywhere(console: Console, api: Api) -> None:
    stolen = console.api.client.session.cookie_jar.filter_cookies(
        console.api.client.make_url("/console/")
    )[COOKIE].value
    response = await console.post("/console/sign-out")
    assert response.status == 303 and response.headers["Location"] == "/console/"
    replay = await api.client.get(
        console.url("/devices"), headers={"Cookie": f"{COOKIE}={stolen}"}, allow_redirects=False
    )
    assert replay.status == 303 and replay.headers["Location"] == "/console/"
