"""Console single sign-on (OIDC authorization code + PKCE) against a small provider the tests
start (tests/oidc_provider.py): discovery, JWKS, authorization and token endpoints."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import Stores
from console_rig import Console, csrf_of
from oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider
from test_admin_helpers import Api, admin_settings, running_api
from yarl import URL

from admin_api.console.session import COOKIE


@pytest.fixture
async def provider(tenant: str) -> AsyncIterator[OidcProvider]:
    started = OidcProvider(tenant=tenant, audience="gatekeeper-admin")
    await started.start()
    yield started
    await started.close()


@pytest.fixture
async def api(
    stores: Stores,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
    provider: OidcProvider,
) -> AsyncIterator[Api]:
    # The admin API trusts the provider's tokens (JWKS), as a deployment with SSO does.
    settings = admin_settings(
        stores.pg_url,
        stores.redis_url,
        jwks_url=provider.jwks_url,
        jwt_issuer=provider.issuer,
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
    )
    async with running_api(settings, pg_pool, redis_client, tenant) as client:
        yield client


def _no_session(response: aiohttp.ClientResponse) -> bool:
    """No session cookie set (the sign-in page clears it: an empty value)."""
    cookie = response.cookies.get(COOKIE)
    return cookie is None or cookie.value == ""


async def _to_callback(api: Api) -> str:
    """Start the flow in ``api``'s browser and let the provider sign in: the callback URL."""
    started = await api.client.get("/console/oidc/start", allow_redirects=False)
    assert started.status == 303
    authorize = URL(started.headers["Location"])
    assert authorize.query["code_challenge_method"] == "S256"
    assert len(authorize.query["code_challenge"]) == 43  # base64url of a SHA-256, no padding
    assert authorize.query["redirect_uri"] == str(api.client.make_url("/console/oidc/callback"))
    async with api.client.session.get(authorize, allow_redirects=False) as answer:
        assert answer.status == 200
        found = re.search(r'href="([^"]+)"', await answer.text())
        assert found is not None
        return html.unescape(found[1])


async def test_single_sign_on_with_pkce(api: Api, provider: OidcProvider) -> None:
    page = await (await api.client.get("/console/")).text()
    assert '<a class="button" href="/console/oidc/start">Sign in with single sign-on</a>' in page
    callback = await _to_callback(api)
    async with api.client.session.get(callback, allow_redirects=False) as response:
        assert response.status == 200
        html = await response.text()
        assert f'content="0; url=/console/{api.tenant}/devices"' in html
        assert "SameSite=Strict" in response.headers.getall("Set-Cookie")[0]
    assert len(provider.redeemed) == 1
    devices = await api.client.get(f"/console/{api.tenant}/devices", allow_redirects=False)
    text = await devices.text()
    assert devices.status == 200 and "alice@example.com" in text
    # The session acts with the provider's access token: the audit names its subject.
    console = Console(api)
    console.csrf = csrf_of(text)
    await console.submit(console.url("/tokens"), {"name": "from sso"})
    audit = await (await api.call("GET", api.path("/audit?action=token.create"))).json()
    assert [e["actor"] for e in audit] == ["alice@example.com"]


async def test_a_callback_in_another_browser_is_refused(api: Api) -> None:
    callback = await _to_callback(api)
    async with (
        aiohttp.ClientSession() as other_browser,
        other_browser.get(callback, allow_redirects=False) as response,
    ):
        assert response.status == 403
        assert "not started in this browser" in await response.text()
        assert _no_session(response)


async def test_a_callback_works_once(api: Api) -> None:
    callback = await _to_callback(api)
    async with api.client.session.get(callback, allow_redirects=False) as first:
        assert first.status == 200
    # The flow cookie is gone with the first use; even with it back, the state is spent.
    state = URL(callback).query["state"]
    async with api.client.session.get(
        callback,
        allow_redirects=False,
        headers={"Cookie": f"gatekeeper_console_oidc={state}"},
    ) as second:
        assert second.status == 401
        assert "already used" in await second.text()


async def test_an_id_token_of_another_sign_in_is_refused(api: Api, provider: OidcProvider) -> None:
    provider.wrong_nonce = True
    callback = await _to_callback(api)
    async with api.client.session.get(callback, allow_redirects=False) as response:
        assert response.status == 401
        assert "belongs to another sign-in" in await response.text()
        assert _no_session(response)


async def test_the_providers_refusal_is_shown(api: Api) -> None:
    response = await api.client.get(
        "/console/oidc/callback?error=access_denied&error_description=User+said+no"
    )
    assert response.status == 401
    assert "the identity provider said: User said no" in await response.text()
