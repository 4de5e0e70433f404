"""The console's Webhooks pages: list, create (the signing secret shown once), send a test
event, pause and enable, reset the secret, delete; errors and read-only sessions. Through the
real admin app (the console calls its API), Postgres and Valkey."""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest
from console_rig import Console
from test_admin_helpers import Api
from webhook_rig import create_webhook, drop_webhooks

from admin_api.auth import WEBHOOK_READ

_SECRET = re.compile(r'id="new-secret" readonly value="(whsec_[^"]+)"')
TARGET = "http://127.0.0.1:9/hook"  # nothing listens: deliveries fail, which these tests ignore


@pytest.fixture
async def hooks_console(local_api: Api) -> Console:
    console = Console(local_api)
    assert (await console.sign_in()).status == 303
    return console


def _shown_secret(page: str) -> str:
    found = _SECRET.search(page)
    assert found is not None, "no secret on the page"
    return found.group(1)


async def test_a_webhook_from_creation_to_deletion(
    hooks_console: Console, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    console, api = hooks_console, hooks_console.api
    listing = await console.text(console.url("/webhooks"))
    assert "No webhooks yet." in listing and 'value="device.conflict"' in listing

    form = {"url": TARGET, "description": "pager", "events": "device.blocked"}
    created = await console.submit(console.url("/webhooks"), form)
    secret = _shown_secret(created)
    assert "Signing secret (shown once)" in created and "device.blocked" in created
    (hook_id,) = await pg_pool.fetch("SELECT webhook_id FROM webhooks WHERE tenant_id = $1", tenant)
    hook = str(hook_id[0])
    assert (
        await pg_pool.fetchval("SELECT secret FROM webhooks WHERE webhook_id = $1", hook_id[0])
        == secret
    )
    page_url = console.url(f"/webhooks/{hook}")
    assert secret not in await console.text(page_url)  # shown once
    listing = await console.text(console.url("/webhooks"))
    assert TARGET in listing and "Enabled" in listing and secret not in listing

    tested = await console.submit(page_url + "/test")
    assert re.search(r"Test event [0-9a-f-]{36} queued", tested)
    assert (
        await pg_pool.fetchval(
            "SELECT count(*) FROM event_outbox WHERE tenant_id = $1 AND type = 'webhook.test'",
            tenant,
        )
        == 1
    )

    paused = await console.submit(page_url + "/pause")
    assert "Paused: nothing is delivered to it" in paused
    assert (await (await api.call("GET", api.path(f"/webhooks/{hook}"))).json())["enabled"] is False
    enabled = await console.submit(page_url + "/enable")
    assert "Paused" not in enabled
    assert (await (await api.call("GET", api.path(f"/webhooks/{hook}"))).json())["enabled"] is True

    reset = await console.submit(page_url + "/reset-secret", {"grace": "3600"})
    new_secret = _shown_secret(reset)
    assert new_secret != secret and "The previous secret also signs until" in reset
    stored = await pg_pool.fetchrow(
        "SELECT secret, previous_secret FROM webhooks WHERE webhook_id = $1", hook_id[0]
    )
    assert stored is not None and (stored["secret"], stored["previous_secret"]) == (
        new_secret,
        secret,
    )

    confirm = await console.text(page_url + "?confirm=delete")
    assert "Delete webhook" in confirm
    deleted = await console.submit(page_url + "/delete")
    assert "Webhook deleted." in deleted and "No webhooks yet." in deleted
    assert (await api.call("GET", api.path(f"/webhooks/{hook}"))).status == 404

    audit = await (await api.call("GET", api.path("/audit"))).json()
    actions = [e["action"] for e in audit if e["targetType"] == "webhook"]
    assert sorted(actions) == sorted(
        [
            "webhook.create",
            "webhook.test",
            "webhook.update",
            "webhook.update",
            "webhook.secret_reset",
            "webhook.delete",
        ]
    )


async def test_errors_are_shown_and_a_read_only_session_changes_nothing(
    hooks_console: Console, local_api: Api, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    console = hooks_console
    # No event chosen: the API's 422, shown next to the form.
    refused = await console.submit(console.url("/webhooks"), {"url": TARGET})
    assert 'id="error-create-webhook"' in refused and "events" in refused
    refused = await console.submit(
        console.url("/webhooks"), {"url": "ftp://files.example/x", "events": "key.reset"}
    )
    assert 'id="error-create-webhook"' in refused
    assert await pg_pool.fetchval("SELECT count(*) FROM webhooks WHERE tenant_id = $1", tenant) == 0

    hook = await create_webhook(pg_pool, tenant, TARGET, "whsec_x", ("key.reset",))
    reader = Console(local_api)
    # Read-only for webhooks (Device.Read too: signing in lands on the devices page).
    assert (await reader.sign_in(scopes=[WEBHOOK_READ, "Device.Read"])).status == 303
    page = await reader.text(reader.url(f"/webhooks/{hook}"))
    assert TARGET in page and "whsec_x" not in page
    denied = await reader.submit(reader.url(f"/webhooks/{hook}/pause"))
    assert "Webhook.Write" in denied
    assert await pg_pool.fetchval("SELECT is_enabled FROM webhooks WHERE webhook_id = $1", hook)
    denied = await reader.submit(reader.url("/webhooks"), {"url": TARGET, "events": "key.reset"})
    assert "Webhook.Write" in denied


async def test_another_tenants_webhook_is_not_found(
    hooks_console: Console, pg_pool: asyncpg.Pool
) -> None:
    other = f"t{uuid.uuid4().hex[:12]}"
    theirs = await create_webhook(pg_pool, other, TARGET, "whsec_theirs", ("key.reset",))
    try:
        page = await hooks_console.get(hooks_console.url(f"/webhooks/{theirs}"))
        assert page.status == 404
        assert "whsec_theirs" not in await page.text()
        response = await hooks_console.post(hooks_console.url(f"/webhooks/{theirs}/delete"))
        assert response.status == 303  # back to the page, with the API's 404 as the message
        assert await pg_pool.fetchval("SELECT count(*) FROM webhooks WHERE webhook_id = $1", theirs)
    finally:
        await drop_webhooks(pg_pool, other)
