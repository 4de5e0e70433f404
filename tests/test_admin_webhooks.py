"""Webhook routes (issue 14): create, read, list, change, delete; the secret shown once; the
target guard; tenant isolation; validation. Deliveries, the test event and the scope matrix
are in test_admin_webhook_deliveries.py."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import asyncpg
import pytest
from test_admin_helpers import Api, fields_of, problem

from gatekeeper.store import webhooks as store

HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["device.blocked", "device.unblocked"]}


async def create(api: Api, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await api.call("POST", api.path("/webhooks"), json=body or HOOK)
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def test_create_read_list_and_delete(local_api: Api) -> None:
    api = local_api
    response = await api.call(
        "POST", api.path("/webhooks"), json={**HOOK, "description": "ops pager"}
    )
    assert response.status == 201, await response.text()
    created = await response.json()
    hook_id = created["webhookId"]
    assert uuid.UUID(hook_id)
    assert response.headers["Location"] == api.path(f"/webhooks/{hook_id}")
    assert response.headers["Cache-Control"] == "no-store"
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    shown = {k: v for k, v in created.items() if k != "secret"}
    assert shown == {
        "webhookId": hook_id,
        "url": HOOK["url"],
        "events": HOOK["events"],
        "description": "ops pager",
        "enabled": True,
        "disabledAt": None,
        "failingSince": None,
        "createdAt": shown["createdAt"],
    }
    one = await api.call("GET", api.path(f"/webhooks/{hook_id}"))
    assert one.status == 200 and await one.json() == shown
    second = await create(api)
    listed = await (await api.call("GET", api.path("/webhooks"))).json()
    assert [w["webhookId"] for w in listed] == [second["webhookId"], hook_id]  # newest first
    assert listed[1] == shown
    deleted = await api.call("DELETE", api.path(f"/webhooks/{hook_id}"))
    assert deleted.status == 204
    await problem(await api.call("GET", api.path(f"/webhooks/{hook_id}")), 404)
    await problem(await api.call("DELETE", api.path(f"/webhooks/{hook_id}")), 404)
    remaining = await (await api.call("GET", api.path("/webhooks"))).json()
    assert [w["webhookId"] for w in remaining] == [second["webhookId"]]


async def test_the_list_pages_with_a_cursor(local_api: Api) -> None:
    ids = [(await create(local_api))["webhookId"] for _ in range(5)]
    seen: list[str] = []
    url = local_api.path("/webhooks") + "?limit=2"
    while url:
        response = await local_api.call("GET", url)
        assert response.status == 200
        seen += [w["webhookId"] for w in await response.json()]
        link = response.headers.get("Link")
        url = link.split(">")[0].lstrip("<") if link else ""
    assert seen == ids[::-1]
    await problem(await local_api.call("GET", local_api.path("/webhooks") + "?cursor=abc"), 400)


async def test_the_secret_is_shown_once(
    local_api: Api, pg_pool: asyncpg.Pool, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    api = local_api
    with caplog.at_level(logging.DEBUG):
        created = await create(api)
        hook_id, secret = created["webhookId"], created["secret"]
        await api.call("POST", api.path(f"/webhooks/{hook_id}/test"))
        await api.call("PATCH", api.path(f"/webhooks/{hook_id}"), json={"enabled": False})
        texts = [
            await (await api.call("GET", api.path(f"/webhooks/{hook_id}"))).text(),
            await (await api.call("GET", api.path("/webhooks"))).text(),
            await (await api.call("GET", api.path("/audit"))).text(),
            await (await api.call("GET", api.path(f"/webhooks/{hook_id}/deliveries"))).text(),
        ]
        await api.call("DELETE", api.path(f"/webhooks/{hook_id}"))
    assert all(secret not in text for text in texts)
    assert "secret" not in texts[0] and "secret" not in texts[1]
    audit = json.loads(texts[2])
    assert {e["action"] for e in audit} == {"webhook.create", "webhook.update", "webhook.test"}
    assert audit[-1]["details"] == {"target": "http://127.0.0.1:9", "events": HOOK["events"]}
    assert caplog.records  # the admin app did log (access lines), and not the secret
    assert secret not in caplog.text
    outbox = await pg_pool.fetch("SELECT data::text FROM event_outbox WHERE tenant_id = $1", tenant)
    assert outbox and all(secret not in r[0] for r in outbox)
    # A row of the store module, as a log line would print it, has no secret either.
    again = await create(api)
    row = await store.get_webhook(pg_pool, tenant, uuid.UUID(again["webhookId"]))
    assert row is not None and again["secret"] not in repr(row)


REFUSED_UNLESS_PRIVATE = [
    "http://127.0.0.1:9/hook",
    "http://localhost:8080/hook",
    "http://[::1]/hook",
    "http://10.1.2.3/hook",
    "https://192.168.0.10/hook",
    "http://172.16.5.4/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook",
]
REFUSED_ALWAYS = [
    "file:///etc/passwd",
    "ftp://files.example/hook",
    "http:///hook",
    "http://",
    "https://user:password@hooks.example/x",
    "gopher://127.0.0.1:70/",
    "javascript:alert(1)",
    "https://hooks.example/" + "x" * 2048,
    "http://127.0.0.1:99999/hook",
]


@pytest.mark.parametrize("url", REFUSED_UNLESS_PRIVATE)
async def test_private_targets_are_refused_unless_allowed(
    api: Api, local_api: Api, url: str
) -> None:
    assert not api.settings.webhook_allow_private_targets
    refused = await problem(
        await api.call("POST", api.path("/webhooks"), json={**HOOK, "url": url}), 422
    )
    assert fields_of(refused) == {"url"}
    assert await (await api.call("GET", api.path("/webhooks"))).json() == []
    accepted = await create(local_api, {**HOOK, "url": url})
    assert accepted["url"] == url


@pytest.mark.parametrize("url", REFUSED_ALWAYS)
async def test_malformed_targets_are_refused_even_when_private_is_allowed(
    api: Api, local_api: Api, url: str
) -> None:
    for client in (api, local_api):
        response = await client.call("POST", client.path("/webhooks"), json={**HOOK, "url": url})
        assert fields_of(await problem(response, 422)) == {"url"}, url


async def test_a_public_address_is_accepted_and_odd_hosts_are_a_422(api: Api) -> None:
    public = await create(api, {**HOOK, "url": "https://93.184.216.34/hook"})
    assert public["url"] == "https://93.184.216.34/hook"
    for host in ("a" * 70 + ".example", "no-such-host.invalid", "a..b"):
        response = await api.call(
            "POST", api.path("/webhooks"), json={**HOOK, "url": f"https://{host}/x"}
        )
        assert fields_of(await problem(response, 422)) == {"url"}, host


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HOOK, "events": []}, "events"),
        ({**HOOK, "events": ["device.blocked", "device.blocked"]}, "events"),
        ({**HOOK, "events": ["device.exploded"]}, "events[0]"),
        ({**HOOK, "events": ["webhook.test"]}, "events[0]"),
        ({**HOOK, "events": "device.blocked"}, "events"),
        ({"events": HOOK["events"]}, "url"),
        ({"url": HOOK["url"]}, "events"),
        ({**HOOK, "secret": "mine"}, "secret"),
        ({**HOOK, "description": "x" * 2001}, "description"),
        ({**HOOK, "description": "nul\x00"}, "description"),
        ({**HOOK, "url": 5}, "url"),
    ],
)
async def test_invalid_bodies_are_422_problems(
    local_api: Api, body: dict[str, Any], field: str
) -> None:
    response = await local_api.call("POST", local_api.path("/webhooks"), json=body)
    assert field in fields_of(await problem(response, 422))


async def test_malformed_requests_are_4xx_problems(local_api: Api) -> None:
    api = local_api
    headers = {"Content-Type": "application/json"}
    await problem(await api.call("POST", api.path("/webhooks"), data="{", headers=headers), 400)
    await problem(await api.call("POST", api.path("/webhooks"), data="[]", headers=headers), 422)
    await problem(await api.call("POST", api.path("/webhooks"), data="url=x"), 415)
    await problem(await api.call("GET", api.path("/webhooks") + "?limit=0"), 400)
    await problem(await api.call("GET", api.path("/webhooks") + "?secret=1"), 400)
    for bad in ("not-a-uuid", "1234", "%00", "x" * 300):
        for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/test")):
            response = await api.call(method, api.path(f"/webhooks/{bad}{suffix}"))
            await problem(response, 404)
        patch = await api.call("PATCH", api.path(f"/webhooks/{bad}"), json={"enabled": True})
        await problem(patch, 404)


async def test_patch_re_enables_pauses_and_changes(
    local_api: Api, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    api = local_api
    hook_id = (await create(api))["webhookId"]
    path = api.path(f"/webhooks/{hook_id}")
    # As the dispatcher leaves a webhook after a day of failures.
    await pg_pool.execute(
        "UPDATE webhooks SET is_enabled = false, disabled_at = now(),"
        " failing_since = now() - interval '25 hours' WHERE webhook_id = $1",
        uuid.UUID(hook_id),
    )
    disabled = await (await api.call("GET", path)).json()
    assert not disabled["enabled"] and disabled["disabledAt"] and disabled["failingSince"]
    response = await api.call("PATCH", path, json={"enabled": True})
    assert response.status == 200, await response.text()
    enabled = await response.json()
    assert enabled["enabled"] and enabled["disabledAt"] is None and enabled["failingSince"] is None
    row = await pg_pool.fetchrow(
        "SELECT is_enabled, disabled_at, failing_since FROM webhooks WHERE webhook_id = $1",
        uuid.UUID(hook_id),
    )
    assert row is not None and tuple(row) == (True, None, None)
    paused = await (await api.call("PATCH", path, json={"enabled": False})).json()
    assert not paused["enabled"] and paused["disabledAt"] is not None
    again = await (await api.call("PATCH", path, json={"enabled": False})).json()
    assert again["disabledAt"] == paused["disabledAt"]  # pausing twice keeps the first time
    changed = await api.call(
        "PATCH", path, json={"events": ["token.created"], "description": "tokens only"}
    )
    body = await changed.json()
    assert body["events"] == ["token.created"] and body["description"] == "tokens only"
    assert body["enabled"] is False and body["url"] == HOOK["url"]
    cleared = await (await api.call("PATCH", path, json={"description": None})).json()
    assert cleared["description"] is None and cleared["events"] == ["token.created"]
    for bad, field in (({}, "(body)"), ({"url": "http://127.0.0.1:1/"}, "url")):
        assert field in fields_of(await problem(await api.call("PATCH", path, json=bad), 422))
    await problem(await api.call("PATCH", path, json={"enabled": "yes"}), 422)
    actions = await pg_pool.fetch(
        "SELECT action, details FROM audit_log WHERE tenant_id = $1 ORDER BY id", tenant
    )
    assert [a["action"] for a in actions].count("webhook.update") == 5
    assert json.loads(actions[1]["details"]) == {"enabled": True}


async def test_another_tenants_webhook_is_not_found(local_api: Api) -> None:
    api = local_api
    hook_id = (await create(api))["webhookId"]
    other = f"o{uuid.uuid4().hex[:12]}"
    assert await (await api.call("GET", api.path("/webhooks", other), tenant=other)).json() == []
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"enabled": False}),
        ("DELETE", "", None),
        ("GET", "/deliveries", None),
        ("POST", "/test", None),
    ):
        path = api.path(f"/webhooks/{hook_id}{suffix}", other)
        await problem(await api.call(method, path, json=body, tenant=other), 404)
        # The owner's token on the other tenant's path: the wrong tenant.
        await problem(await api.call(method, path, json=body), 403)
    still = await (await api.call("GET", api.path(f"/webhooks/{hook_id}"))).json()
    assert still["enabled"] is True


async def test_a_tenant_has_at_most_so_many_webhooks(
    local_api: Api, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    await pg_pool.execute(
        "INSERT INTO webhooks (webhook_id, tenant_id, url, events, secret)"
        " SELECT gen_random_uuid(), $1, 'http://127.0.0.1:9/', '{device.blocked}', 's'"
        " FROM generate_series(1, $2)",
        tenant,
        store.MAX_WEBHOOKS_PER_TENANT - 1,
    )
    await create(local_api)
    await problem(await local_api.call("POST", local_api.path("/webhooks"), json=HOOK), 409)
