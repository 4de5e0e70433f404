"""Device connect (API key) and connection reset (new key, old key revoked now or after grace);
personal access tokens: create, list, revoke."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import Stores
from test_admin_helpers import LOGO, Api, admin_settings, fields_of, problem, running_api

from gatekeeper.domain import edgeview
from gatekeeper.domain.credentials import digest_secret


@pytest.fixture
async def api(
    stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> AsyncIterator[Api]:
    settings = admin_settings(stores.pg_url, stores.redis_url, key_pepper="pepper-for-tests")
    async with running_api(settings, pg_pool, redis_client, tenant) as client:
        yield client


async def _connect(api: Api, device_id: str, key: str | None) -> int:
    headers = {"X-Api-Key": key} if key is not None else {}
    response = await api.call(
        "POST", api.device_path(device_id, "/connect"), auth=False, headers=headers
    )
    if response.status == 200:
        assert await response.json() == {"settings": {"logoUrl": LOGO}}
    else:
        await problem(response, response.status)
    return response.status


async def _reset(api: Api, device_id: str, **body: float) -> str:
    response = await api.call(
        "POST", api.device_path(device_id, "/connections/reset"), json=body or None
    )
    assert response.status == 200, await response.text()
    result = await response.json()
    assert result["deviceId"] == device_id and result["tenantId"] == api.tenant
    assert result["environment"] == "http://edge.example.test:8080"
    assert result["apiKey"].startswith("gkd_")
    assert response.headers["Cache-Control"] == "no-store"
    return str(result["apiKey"])


async def test_connect_reset_old_key_rejected_new_accepted(
    api: Api, redis_client: aioredis.Redis
) -> None:
    await api.create_device("cc")
    first = await _reset(api, "cc")
    assert await _connect(api, "cc", first) == 200
    second = await _reset(api, "cc")
    assert await _connect(api, "cc", first) == 401
    assert await _connect(api, "cc", second) == 200
    digest = digest_secret(second, "pepper-for-tests").hex()
    assert await redis_client.hexists(edgeview.KEYS_HASH, digest)
    assert not await redis_client.hexists(
        edgeview.KEYS_HASH, digest_secret(first, "pepper-for-tests").hex()
    )


async def test_reset_with_grace_keeps_old_key_until_then(api: Api) -> None:
    await api.create_device("gr")
    first = await _reset(api, "gr")
    second = await _reset(api, "gr", graceSeconds=1.5)
    assert await _connect(api, "gr", first) == 200
    assert await _connect(api, "gr", second) == 200
    await asyncio.sleep(1.7)
    assert await _connect(api, "gr", first) == 401
    assert await _connect(api, "gr", second) == 200


async def test_connect_errors(api: Api) -> None:
    await api.create_device("ce")
    key = await _reset(api, "ce")
    assert await _connect(api, "ce", None) == 401
    assert await _connect(api, "ce", "gkd_wrong") == 401
    assert await _connect(api, "ce", key + "x") == 401
    assert await _connect(api, "ce", "x" * 5000) == 401
    assert await _connect(api, "other-device", key) == 401  # a key is bound to its device
    other_tenant = await api.call(
        "POST",
        api.path("/devices/ce/connect", tenant="elsewhere"),
        auth=False,
        headers={"X-Api-Key": key},
    )
    await problem(other_tenant, 401)
    await api.call("POST", api.device_path("ce", "/block"))
    assert (
        await problem(
            await api.call(
                "POST", api.device_path("ce", "/connect"), auth=False, headers={"X-Api-Key": key}
            ),
            403,
        )
    )["title"] == "Device blocked"
    await api.call("POST", api.device_path("ce", "/unblock"))
    await api.call("PUT", api.device_path("ce"), json={"isEnabled": False})
    assert (
        await problem(
            await api.call(
                "POST", api.device_path("ce", "/connect"), auth=False, headers={"X-Api-Key": key}
            ),
            403,
        )
    )["title"] == "Device disabled"
    await api.call("PUT", api.device_path("ce"), json={"isEnabled": True})
    assert await _connect(api, "ce", key) == 200


async def test_reset_errors(api: Api) -> None:
    await api.create_device("re")
    path = api.device_path("re", "/connections/reset")
    assert fields_of(
        await problem(await api.call("POST", path, json={"graceSeconds": -1}), 422)
    ) == {"graceSeconds"}
    assert fields_of(
        await problem(await api.call("POST", path, json={"graceSeconds": 10**9}), 422)
    ) == {"graceSeconds"}
    assert fields_of(await problem(await api.call("POST", path, json={"grace": 1}), 422)) == {
        "grace"
    }
    await problem(await api.call("POST", api.device_path("ghost", "/connections/reset")), 404)


async def test_tokens_create_list_revoke(api: Api, redis_client: aioredis.Redis) -> None:
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    response = await api.call(
        "POST", api.path("/tokens"), json={"name": "ci", "expiresAt": expires}
    )
    assert response.status == 201
    created = await response.json()
    assert created["token"].startswith("gkp_") and created["name"] == "ci"
    assert response.headers["Location"] == api.path(f"/tokens/{created['tokenId']}")
    assert created["expiresAt"].endswith("Z") and created["createdAt"]
    digest = digest_secret(created["token"], "pepper-for-tests").hex()
    assert await redis_client.hexists(edgeview.KEYS_HASH, digest)
    plain = await (await api.call("POST", api.path("/tokens"), json={"name": "forever"})).json()
    assert plain["expiresAt"] is None
    listed = await (await api.call("GET", api.path("/tokens"))).json()
    assert [t["name"] for t in listed] == ["forever", "ci"]
    assert all(
        "token" not in t and t["lastUsedAt"] is None and t["revokedAt"] is None for t in listed
    )
    assert listed[1]["prefix"] == created["token"][:8] and listed[1]["createdBy"] == "tester"
    text = await (await api.call("GET", api.path("/tokens"))).text()
    assert created["token"] not in text
    path = api.path(f"/tokens/{created['tokenId']}")
    assert (await api.call("DELETE", path)).status == 204
    assert (await api.call("DELETE", path)).status == 204  # idempotent
    assert not await redis_client.hexists(edgeview.KEYS_HASH, digest)
    listed = await (await api.call("GET", api.path("/tokens"))).json()
    assert next(t for t in listed if t["name"] == "ci")["revokedAt"] is not None
    await problem(await api.call("DELETE", api.path(f"/tokens/{uuid.uuid4()}")), 404)
    await problem(await api.call("DELETE", api.path("/tokens/not-a-uuid")), 404)
    # Another tenant cannot revoke it, and does not see it.
    await problem(
        await api.call(
            "DELETE",
            api.path(f"/tokens/{plain['tokenId']}", tenant="elsewhere"),
            tenant="elsewhere",
        ),
        404,
    )
    assert (
        await (
            await api.call("GET", api.path("/tokens", tenant="elsewhere"), tenant="elsewhere")
        ).json()
        == []
    )
    audit = await (await api.call("GET", api.path("/audit"))).json()
    assert [e["action"] for e in audit] == ["token.revoke", "token.create", "token.create"]


async def test_token_validation(api: Api) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    cases = [
        ({}, {"name"}),
        ({"name": ""}, {"name"}),
        ({"name": "x" * 201}, {"name"}),
        ({"name": "a", "expiresAt": past}, {"expiresAt"}),
        ({"name": "a", "expiresAt": "tomorrow"}, {"expiresAt"}),
        ({"name": "a", "expiresAt": "2999-01-01T00:00:00"}, {"expiresAt"}),
        ({"name": "a", "scopes": ["all"]}, {"scopes"}),
    ]
    for body, bad in cases:
        response = await api.call("POST", api.path("/tokens"), json=body)
        assert fields_of(await problem(response, 422)) == bad, body
    await problem(await api.call("GET", api.path("/tokens") + "?all=1"), 400)
