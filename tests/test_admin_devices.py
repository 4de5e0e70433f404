"""Device routes of the admin API: create, read, update, delete, block, unblock, history, and
validation of every input, against a real Postgres and Valkey on real sockets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis
from test_admin_helpers import LOGO, Api, fields_of, problem

from gatekeeper.domain import edgeview


async def test_create_read_and_location(api: Api) -> None:
    created = await api.create_device("crew-1", name="Gate A", description="north")
    assert created["deviceId"] == "crew-1" and created["displayName"] == "Gate A"
    assert created["type"] == "CrewCheck" and created["settings"] == {"logoUrl": LOGO}
    assert created["isEnabled"] and not created["isBlocked"] and created["lastActivityAt"] is None
    assert created["createdAt"].endswith("Z")
    response = await api.call("GET", api.device_path("crew-1"))
    assert response.status == 200 and await response.json() == created
    generated = await api.create_device()
    assert len(generated["deviceId"]) == 36 and generated["displayName"] == generated["deviceId"]


async def test_create_sets_location_header(api: Api) -> None:
    response = await api.call(
        "POST",
        api.path("/devices"),
        json={"type": "CrewCheck", "deviceId": "a/b?c", "settings": {"logoUrl": LOGO}},
    )
    assert response.status == 201
    assert response.headers["Location"] == api.path("/devices/a%2Fb%3Fc")
    fetched = await api.call("GET", response.headers["Location"])
    assert fetched.status == 200 and (await fetched.json())["deviceId"] == "a/b?c"


async def test_create_conflict(api: Api) -> None:
    await api.create_device("dup")
    response = await api.call(
        "POST",
        api.path("/devices"),
        json={"type": "CrewCheck", "deviceId": "dup", "settings": {"logoUrl": LOGO}},
    )
    await problem(response, 409)


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        ({"type": "Toaster", "settings": {"logoUrl": LOGO}}, {"type"}),
        ({"type": "CrewCheck", "settings": {}}, {"settings.logoUrl"}),
        ({"type": "CrewCheck", "settings": {"logoUrl": "ftp://x/y.png"}}, {"settings.logoUrl"}),
        (
            {"type": "CrewCheck", "settings": {"logoUrl": "javascript:alert(1)"}},
            {"settings.logoUrl"},
        ),
        ({"type": "CrewCheck", "settings": {"logoUrl": "http://"}}, {"settings.logoUrl"}),
        ({"type": "CrewCheck", "settings": {"logoUrl": LOGO, "color": "red"}}, {"settings.color"}),
        ({"type": "CrewCheck", "settings": {"logoUrl": 7}}, {"settings.logoUrl"}),
        ({"type": "CrewCheck", "settings": "x"}, {"settings"}),
        ({"settings": {"logoUrl": LOGO}}, {"type"}),
        ({"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "owner": "me"}, {"owner"}),
        ({"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "name": "x" * 201}, {"name"}),
        ({"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "name": ""}, {"name"}),
        (
            {"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "deviceId": "has space"},
            {"deviceId"},
        ),
        ({"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "deviceId": "x" * 129}, {"deviceId"}),
        ({"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "name": "a\x00b"}, {"name"}),
        ({"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "description": 5}, {"description"}),
        ([1, 2], {"(body)"}),
    ],
)
async def test_create_rejects_invalid_values(api: Api, body: object, bad: set[str]) -> None:
    response = await api.call("POST", api.path("/devices"), json=body)
    assert fields_of(await problem(response, 422)) == bad


async def test_create_rejects_malformed_bodies(api: Api) -> None:
    headers = {"Content-Type": "application/json"}
    for raw in (b"{", b'{"type": NaN}', b'{"a":1,"a":2}', b"\xff\xfe", b"[1,]"):
        response = await api.call("POST", api.path("/devices"), data=raw, headers=headers)
        await problem(response, 400)
    response = await api.call(
        "POST",
        api.path("/devices"),
        data=b"type=CrewCheck",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    await problem(response, 415)
    big = json.dumps(
        {"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "description": "x" * 100_000}
    )
    response = await api.call("POST", api.path("/devices"), data=big, headers=headers)
    await problem(response, 413)
    response = await api.call("POST", api.path("/devices"), data=b'"\\ud800"', headers=headers)
    await problem(response, 422)


@pytest.mark.parametrize("depth", [33, 1_000, 10_000])  # 10,000 still fits in 64 KiB
@pytest.mark.parametrize("route", ["/devices", "/tokens"])
async def test_deeply_nested_bodies_are_a_400(api: Api, route: str, depth: int) -> None:
    """Nesting deep enough to exhaust the parser's or the validator's recursion is refused as
    malformed, not a 500; so is any nesting deeper than a valid body could be."""
    headers = {"Content-Type": "application/json"}
    for raw in (
        "[" * depth + "]" * depth,
        '{"settings":' + '{"a":' * depth + "1" + "}" * depth + "}",
        '{"name":"n","x":' + "[" * depth + "]" * depth + "}",
    ):
        response = await api.call("POST", api.path(route), data=raw.encode(), headers=headers)
        body = await problem(response, 400)
        assert "nested" in body["detail"]


async def test_injection_is_stored_literally(api: Api) -> None:
    name = "'; DROP TABLE devices; -- <script>alert(1)</script> {{7*7}} ${x} %s \\"
    created = await api.create_device("inj", name=name, description="\u202e\U0001f600")
    assert created["name"] == name and created["description"] == "\u202e\U0001f600"
    fetched = await (await api.call("GET", api.device_path("inj"))).json()
    assert fetched["name"] == name
    listed = await (await api.call("GET", api.path("/devices") + "?q=%25s%20%5C")).json()
    assert [d["deviceId"] for d in listed] == ["inj"]


async def test_read_unknown_and_impossible_ids(api: Api) -> None:
    await problem(await api.call("GET", api.device_path("nope")), 404)
    await problem(await api.call("GET", api.path("/devices/a%00b")), 404)
    await problem(await api.call("GET", api.path("/devices/" + "x" * 200)), 404)
    await problem(await api.call("GET", api.path("/devices/%C3%A9")), 404)


async def test_update_name_description_and_enabled(api: Api, redis_client: aioredis.Redis) -> None:
    await api.create_device("upd", name="old")
    response = await api.call("PUT", api.device_path("upd"), json={"name": "new"})
    body = await response.json()
    assert response.status == 200 and body["name"] == "new" and body["displayName"] == "new"
    response = await api.call(
        "PUT", api.device_path("upd"), json={"name": None, "description": "d", "isEnabled": False}
    )
    body = await response.json()
    assert body["name"] is None and body["displayName"] == "upd" and body["description"] == "d"
    assert body["isEnabled"] is False
    member = edgeview.member(api.tenant, "upd")
    assert await redis_client.sismember(edgeview.DISABLED_SET, member)
    response = await api.call("PUT", api.device_path("upd"), json={"isEnabled": True})
    assert (await response.json())["isEnabled"] is True
    assert not await redis_client.sismember(edgeview.DISABLED_SET, member)


async def test_update_errors(api: Api) -> None:
    await api.create_device("upd2")
    await problem(await api.call("PUT", api.device_path("ghost"), json={"name": "x"}), 404)
    assert fields_of(
        await problem(await api.call("PUT", api.device_path("upd2"), json={"settings": {}}), 422)
    ) == {"settings"}
    assert fields_of(
        await problem(
            await api.call("PUT", api.device_path("upd2"), json={"isEnabled": "yes"}), 422
        )
    ) == {"isEnabled"}
    await problem(await api.call("PUT", api.device_path("upd2"), json={}), 422)
    await problem(
        await api.call(
            "PUT", api.device_path("upd2"), data=b"{", headers={"Content-Type": "application/json"}
        ),
        400,
    )


async def test_block_unblock_idempotent(api: Api, redis_client: aioredis.Redis) -> None:
    await api.create_device("blk")
    member = edgeview.member(api.tenant, "blk")
    first = await (
        await api.call("POST", api.device_path("blk", "/block"), json={"reason": "stolen"})
    ).json()
    assert first["isBlocked"] and first["blockReason"] == "stolen" and first["blockedAt"]
    assert first["lastActivityAt"] == first["blockedAt"]
    assert await redis_client.sismember(edgeview.BLOCKED_SET, member)
    again = await api.call("POST", api.device_path("blk", "/block"))
    body = await again.json()
    assert again.status == 200 and body["blockedAt"] == first["blockedAt"]
    assert body["blockReason"] == "stolen"
    await problem(
        await api.call("POST", api.device_path("blk", "/block"), json={"reason": "x" * 501}), 422
    )
    for _ in range(2):
        response = await api.call("POST", api.device_path("blk", "/unblock"))
        body = await response.json()
        assert response.status == 200 and not body["isBlocked"] and body["blockedAt"] is None
    assert not await redis_client.sismember(edgeview.BLOCKED_SET, member)
    await problem(await api.call("POST", api.device_path("ghost", "/block")), 404)
    await problem(await api.call("POST", api.device_path("ghost", "/unblock")), 404)
    await problem(
        await api.call("POST", api.device_path("blk", "/unblock"), json={"reason": "x"}), 422
    )


async def test_delete_revokes_keys_and_refuses_blocked(
    api: Api, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await api.create_device("del")
    reset = await (await api.call("POST", api.device_path("del", "/connections/reset"))).json()
    await api.call("POST", api.device_path("del", "/block"))
    await problem(await api.call("DELETE", api.device_path("del")), 409)
    await api.call("POST", api.device_path("del", "/unblock"))
    await api.call("PUT", api.device_path("del"), json={"isEnabled": False})
    response = await api.call("DELETE", api.device_path("del"))
    assert response.status == 204
    await problem(await api.call("GET", api.device_path("del")), 404)
    await problem(await api.call("DELETE", api.device_path("del")), 404)
    revoked = await pg_pool.fetchval(
        "SELECT bool_and(revoked_at IS NOT NULL) FROM api_keys WHERE tenant_id = $1"
        " AND device_id = 'del'",
        api.tenant,
    )
    assert revoked
    assert not await redis_client.sismember(
        edgeview.DISABLED_SET, edgeview.member(api.tenant, "del")
    )
    connect = await api.call(
        "POST",
        api.device_path("del", "/connect"),
        auth=False,
        headers={"X-Api-Key": reset["apiKey"]},
    )
    await problem(connect, 401)


async def test_history_newest_first(api: Api, pg_pool: asyncpg.Pool) -> None:
    await api.create_device("hist")
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    first = {
        "application": "crew",
        "applicationVersion": "1.0",
        "os": "android",
        "osVersion": "13",
        "manufacturer": "acme",
        "model": "x1",
    }
    second = {**first, "applicationVersion": "1.1"}
    await pg_pool.executemany(
        "INSERT INTO device_history (tenant_id, device_id, recorded_at, changed_fields,"
        " previous, current) VALUES ($1, 'hist', $2, $3, $4::jsonb, $5::jsonb)",
        [
            (api.tenant, t0, list(first), None, json.dumps(first)),
            (
                api.tenant,
                t0 + timedelta(hours=1),
                ["applicationVersion"],
                json.dumps(first),
                json.dumps(second),
            ),
        ],
    )
    response = await api.call("GET", api.device_path("hist", "/history"))
    records = await response.json()
    assert response.status == 200 and len(records) == 2
    assert records[0] == {
        "recordedAt": "2024-05-01T01:00:00.000000Z",
        "changedFields": ["applicationVersion"],
        "previous": first,
        "current": second,
        "conflict": False,
    }
    assert records[1]["previous"] is None and records[1]["current"] == first
    page = await api.call("GET", api.device_path("hist", "/history") + "?limit=1")
    assert [r["recordedAt"] for r in await page.json()] == [records[0]["recordedAt"]]
    link = page.headers["Link"]
    nxt = link[link.index("<") + 1 : link.index(">")]
    rest = await (await api.call("GET", nxt)).json()
    assert rest == records[1:]
    await problem(await api.call("GET", api.device_path("ghost", "/history")), 404)
    await problem(await api.call("GET", api.device_path("hist", "/history") + "?cursor=zz"), 400)


async def test_audit_records_every_mutation(api: Api) -> None:
    await api.create_device("aud")
    await api.call("PUT", api.device_path("aud"), json={"name": "n"})
    await api.call("POST", api.device_path("aud", "/block"), json={"reason": "lost it"})
    await api.call("POST", api.device_path("aud", "/unblock"))
    await api.call("POST", api.device_path("aud", "/connections/reset"))
    await api.call("DELETE", api.device_path("aud"))
    response = await api.call("GET", api.path("/audit"))
    entries = await response.json()
    assert [e["action"] for e in entries] == [
        "device.delete",
        "device.connection.reset",
        "device.unblock",
        "device.block",
        "device.update",
        "device.create",
    ]
    assert {e["actor"] for e in entries} == {"tester"}
    assert all(e["targetType"] == "device" and e["targetId"] == "aud" for e in entries)
    assert entries[3]["reason"] == "lost it"
    page = await api.call("GET", api.path("/audit") + "?limit=4")
    link = page.headers["Link"]
    rest = await (await api.call("GET", link[link.index("<") + 1 : link.index(">")])).json()
    assert [e["id"] for e in await page.json() + rest] == [e["id"] for e in entries]
