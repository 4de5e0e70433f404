"""Admin authentication and authorisation: bearer JWTs (local secret and JWKS), the scope matrix
and tenant isolation of every route; and the admin token helpers of the ``gatekeeper`` command."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import Stores
from cryptography.hazmat.primitives.asymmetric import rsa
from test_admin_helpers import SECRET, Api, admin_settings, problem, running_api

from admin_api.auth import DEVICE_READ, DEVICE_WRITE, TOKEN_READ, TOKEN_WRITE, TokenVerifier
from gatekeeper.runtime.admin_tokens import load_or_create_local_secret, mint_token

# Every tenant-scoped route: method, path suffix (after /api/{tenant}), scope it needs.
ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/devices", DEVICE_READ),
    ("POST", "/devices", DEVICE_WRITE),
    ("GET", "/devices/dev", DEVICE_READ),
    ("PUT", "/devices/dev", DEVICE_WRITE),
    ("DELETE", "/devices/dev", DEVICE_WRITE),
    ("POST", "/devices/dev/block", DEVICE_WRITE),
    ("POST", "/devices/dev/unblock", DEVICE_WRITE),
    ("GET", "/devices/dev/history", DEVICE_READ),
    ("POST", "/devices/dev/connections/reset", DEVICE_WRITE),
    ("POST", "/tokens", TOKEN_WRITE),
    ("GET", "/tokens", TOKEN_READ),
    ("DELETE", "/tokens/00000000-0000-0000-0000-000000000000", TOKEN_WRITE),
    ("GET", "/audit", DEVICE_READ),
    ("POST", "/devices/bulk-block", DEVICE_WRITE),
    ("POST", "/devices/bulk-unblock", DEVICE_WRITE),
    ("POST", "/devices/bulk-delete", DEVICE_WRITE),
]
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/devices"): {
        "type": "CrewCheck",
        "deviceId": "new",
        "settings": {"logoUrl": "https://x.example/l.png"},
    },
    ("PUT", "/devices/dev"): {"name": "renamed"},
    ("POST", "/tokens"): {"name": "ci"},
    **{
        ("POST", f"/devices/bulk-{action}"): {"filter": {"deviceIds": ["dev"]}}
        for action in ("block", "unblock", "delete")
    },
}


async def _send(
    api: Api, method: str, suffix: str, scopes: list[str] | None, tenant: str | None = None
) -> Any:
    return await api.call(
        method,
        api.path(suffix, tenant),
        json=BODIES.get((method, suffix)),
        scopes=scopes,
        tenant=tenant,
    )


@pytest.mark.parametrize(("method", "suffix", "scope"), ROUTES)
async def test_scope_matrix(api: Api, method: str, suffix: str, scope: str) -> None:
    await api.create_device("dev")
    others = [s for s in (DEVICE_READ, DEVICE_WRITE, TOKEN_READ, TOKEN_WRITE) if s != scope]
    denied = await _send(api, method, suffix, others)
    body = await problem(denied, 403)
    assert scope in body["detail"]
    assert "insufficient_scope" in denied.headers["WWW-Authenticate"]
    allowed = await _send(api, method, suffix, [scope])
    assert allowed.status not in (401, 403), await allowed.text()


@pytest.mark.parametrize(("method", "suffix", "scope"), ROUTES)
async def test_other_tenants_token_is_refused(
    api: Api, method: str, suffix: str, scope: str
) -> None:
    await api.create_device("dev")
    # A token of another tenant, with every scope, on this tenant's path.
    response = await api.client.request(
        method,
        api.path(suffix),
        json=BODIES.get((method, suffix)),
        headers={"Authorization": f"Bearer {api.token(tenant='someone-else')}"},
    )
    await problem(response, 403)
    check = await api.call("GET", api.path("/devices/dev"))
    assert (await check.json())["name"] is None and not (await check.json())["isBlocked"]


@pytest.mark.parametrize(("method", "suffix", "scope"), ROUTES)
async def test_a_tenant_id_the_edge_would_refuse_is_404_with_or_without_a_token(
    api: Api, method: str, suffix: str, scope: str
) -> None:
    """Upper case, too long, or outside a-z 0-9 . _ ~ -: no tenant can have that id, so nothing
    under it exists; the answer does not depend on credentials (docs/decisions.md)."""
    for tenant in (api.tenant.upper(), "t" * 65, "t%21x"):
        for headers in ({}, {"Authorization": f"Bearer {api.token(tenant=tenant)}"}):
            response = await api.client.request(
                method, api.path(suffix, tenant), headers=headers, json=BODIES.get((method, suffix))
            )
            body = await problem(response, 404)
            assert body["type"].endswith("unknown-tenant")
            assert "a-z 0-9 . _ ~ -" in body["detail"]


async def test_device_connect_under_a_refused_tenant_id_is_404(api: Api) -> None:
    response = await api.client.post(
        api.path("/devices/dev/connect", api.tenant.upper()), headers={"X-Api-Key": "gk_x"}
    )
    body = await problem(response, 404)
    assert body["type"].endswith("unknown-tenant")


@pytest.mark.parametrize(("method", "suffix", "scope"), ROUTES)
async def test_missing_or_invalid_token_is_401(
    api: Api, method: str, suffix: str, scope: str
) -> None:
    now = int(time.time())
    claims = {
        "iss": "gatekeeper",
        "aud": "gatekeeper-admin",
        "sub": "x",
        "tid": api.tenant,
        "scope": scope,
        "exp": now + 60,
    }
    bad_tokens = [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer ",
        "Bearer not-a-jwt",
        "Bearer " + jwt.encode({**claims, "exp": now - 120}, SECRET, algorithm="HS256"),
        "Bearer " + jwt.encode({**claims, "iss": "evil"}, SECRET, algorithm="HS256"),
        "Bearer " + jwt.encode({**claims, "aud": "other"}, SECRET, algorithm="HS256"),
        "Bearer " + jwt.encode(claims, "wrong-secret-wrong-secret-wrong-secret", algorithm="HS256"),
        "Bearer "
        + jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET, algorithm="HS256"),
        "Bearer " + jwt.encode(claims, None, algorithm="none"),  # type: ignore[arg-type]
    ]
    for header in bad_tokens:
        headers = {"Authorization": header} if header is not None else {}
        response = await api.client.request(
            method, api.path(suffix), headers=headers, json=BODIES.get((method, suffix))
        )
        await problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_scp_list_claim_is_accepted(api: Api) -> None:
    token = jwt.encode(
        {
            "iss": "gatekeeper",
            "aud": "gatekeeper-admin",
            "sub": "idp-user",
            "tid": api.tenant,
            "scp": [DEVICE_READ],
            "exp": int(time.time()) + 60,
        },
        SECRET,
        algorithm="HS256",
    )
    response = await api.client.get(
        api.path("/devices"), headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status == 200


async def test_mint_token_claims() -> None:
    settings = admin_settings("postgresql://x", "redis://x", tenant_claim="org")
    token = mint_token(settings, "acme", [DEVICE_READ, TOKEN_WRITE], subject="ops", ttl_seconds=60)
    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], audience="gatekeeper-admin", issuer="gatekeeper"
    )
    assert claims["org"] == "acme" and claims["scope"] == "Device.Read Token.Write"
    assert claims["sub"] == "ops" and 55 <= claims["exp"] - time.time() <= 60


def test_local_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create_local_secret(tmp_path / "data")
    assert len(first) >= 32
    path = tmp_path / "data" / "jwt-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_local_secret(tmp_path / "data") == first


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[str, list[dict[str, Any]], dict[str, int]]]:
    """A tiny identity provider: serves whatever keys the test puts in the returned list."""
    keys: list[dict[str, Any]] = []
    hits = {"count": 0}

    async def serve(request: web.Request) -> web.Response:
        hits["count"] += 1
        return web.json_response({"keys": keys})

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("/jwks.json")), keys, hits
    await server.close()


def _rsa_jwk(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return private, jwk


async def test_jwks_keys_and_refresh_on_unknown_kid(
    stores: Stores,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
    jwks_server: tuple[str, list[dict[str, Any]], dict[str, int]],
) -> None:
    url, keys, hits = jwks_server
    first_key, first_jwk = _rsa_jwk("k1")
    keys.append(first_jwk)
    settings = admin_settings(stores.pg_url, stores.redis_url, jwt_secret=None, jwks_url=url)
    claims = {
        "iss": "gatekeeper",
        "aud": "gatekeeper-admin",
        "sub": "idp",
        "tid": tenant,
        "scope": DEVICE_READ,
        "exp": int(time.time()) + 60,
    }
    verifier = TokenVerifier(settings, jwks_cooldown=0)
    async with running_api(settings, pg_pool, redis_client, tenant, verifier=verifier) as api:

        async def status(token: str) -> int:
            response = await api.client.get(
                api.path("/devices"), headers={"Authorization": f"Bearer {token}"}
            )
            return response.status

        signed = jwt.encode(claims, first_key, algorithm="RS256", headers={"kid": "k1"})
        assert await status(signed) == 200
        assert await status(signed) == 200
        assert hits["count"] == 1  # cached
        second_key, second_jwk = _rsa_jwk("k2")
        keys.append(second_jwk)  # rotation: the IdP publishes a new key
        assert (
            await status(jwt.encode(claims, second_key, algorithm="RS256", headers={"kid": "k2"}))
            == 200
        )
        assert hits["count"] == 2  # refreshed once for the unknown kid
        stranger, _ = _rsa_jwk("k1")
        assert (
            await status(jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "k1"}))
            == 401
        )
        # No HMAC tokens when only a JWKS is configured (no algorithm confusion).
        assert await status(jwt.encode(claims, SECRET, algorithm="HS256")) == 401
