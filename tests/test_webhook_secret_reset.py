"""Resetting a webhook's signing secret: ``POST …/webhooks/{webhookId}/secret/reset``.

The new secret is shown once. With ``graceSeconds`` the replaced secret keeps signing beside the
new one (a second ``v1`` after the new one), so a receiver switches without refusing anything;
without, deliveries carry the new signature alone from the next attempt. Against real Postgres, the
real admin app and a real dispatcher delivering to a receiver on loopback.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from conftest import Stores
from test_admin_helpers import Api, problem
from webhook_rig import (
    Hit,
    Receiver,
    create_webhook,
    dispatcher_settings,
    drop_webhooks,
    emit,
    receiver,
    running_dispatcher,
)

from admin_api.webhook_security import SIGNATURE_HEADER, verify
from gatekeeper.store import webhooks as store


async def _reset(api: Api, hook: uuid.UUID, body: object = None) -> dict[str, str | None]:
    response = await api.call("POST", api.path(f"/webhooks/{hook}/secret/reset"), json=body)
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    answer: dict[str, str | None] = await response.json()
    return answer


async def _deliver(pool: asyncpg.Pool, tenant: str, got: Receiver, device: str) -> Hit:
    event = await emit(pool, tenant, "device.blocked", {"deviceId": device}, device_id=device)
    await got.until(lambda r: event in r.delivered(), f"the event for {device}")
    (hit,) = [h for h in got.hits if h.event_id == event]
    return hit


def _signatures(hit: Hit) -> list[str]:
    return [p for p in hit.headers[SIGNATURE_HEADER].split(",") if p.startswith("v1=")]


async def test_the_old_secret_signs_too_until_its_grace_period_ends(
    local_api: Api, stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    async with receiver() as got:
        first = got.secret
        hook = await create_webhook(pg_pool, tenant, got.url, first, ("device.blocked",))
        settings = dispatcher_settings(stores.pg_url)
        async with running_dispatcher(pg_pool, settings):
            # With a grace period: the new signature first, the old one after it.
            before = datetime.now(UTC)
            answer = await _reset(local_api, hook, {"graceSeconds": 3600})
            second = answer["secret"]
            assert second is not None and second.startswith("whsec_") and second != first
            assert answer["webhookId"] == str(hook)
            until = datetime.fromisoformat(str(answer["previousSecretExpiresAt"]))
            assert before + timedelta(seconds=3590) < until < before + timedelta(seconds=3610)
            hit = await _deliver(pg_pool, tenant, got, "overlap")
            new_part, old_part = _signatures(hit)
            stamp = hit.headers[SIGNATURE_HEADER].split(",")[0]
            assert verify(second, hit.raw, f"{stamp},{new_part}")
            assert verify(first, hit.raw, f"{stamp},{old_part}")
            # A receiver that reads the last v1 (a dict of the pairs) still verifies with the old
            # secret: got.secret is still the first one, and it counted no bad signature.
            assert got.bad_signatures == 0

            # Without one: the new signature alone, from the next delivery on.
            answer = await _reset(local_api, hook)
            third = answer["secret"]
            assert third is not None and answer["previousSecretExpiresAt"] is None
            hit = await _deliver(pg_pool, tenant, got, "switched")
            assert len(_signatures(hit)) == 1
            assert verify(third, hit.raw, hit.headers[SIGNATURE_HEADER])
            assert not verify(second, hit.raw, hit.headers[SIGNATURE_HEADER])
            assert not verify(first, hit.raw, hit.headers[SIGNATURE_HEADER])

            # A grace period that has run out: the old secret signs no more.
            fourth = (await _reset(local_api, hook, {"graceSeconds": 60}))["secret"]
            assert fourth is not None
            await pg_pool.execute(
                "UPDATE webhooks SET previous_secret_until = now() - interval '1 second'"
                " WHERE webhook_id = $1",
                hook,
            )
            hit = await _deliver(pg_pool, tenant, got, "expired")
            assert len(_signatures(hit)) == 1
            assert verify(fourth, hit.raw, hit.headers[SIGNATURE_HEADER])
            assert not verify(third, hit.raw, hit.headers[SIGNATURE_HEADER])


async def test_the_new_secret_is_shown_once_and_never_logged(
    local_api: Api, pg_pool: asyncpg.Pool, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    api = local_api
    created = await api.call(
        "POST", api.path("/webhooks"), json={"url": "http://127.0.0.1:9/h", "events": ["key.reset"]}
    )
    hook = (await created.json())["webhookId"]
    with caplog.at_level(logging.DEBUG):
        secret = (await _reset(api, uuid.UUID(hook), {"graceSeconds": 30}))["secret"]
        assert secret is not None
        texts = [
            await (await api.call("GET", api.path(f"/webhooks/{hook}"))).text(),
            await (await api.call("GET", api.path("/webhooks"))).text(),
            await (await api.call("GET", api.path("/audit"))).text(),
        ]
    assert all(secret not in text and 'secret"' not in text.lower() for text in texts[:2])
    assert secret not in texts[2] and secret not in caplog.text
    (entry,) = [e for e in json.loads(texts[2]) if e["action"] == "webhook.secret_reset"]
    assert entry["details"] == {"graceSeconds": 30}
    assert entry["targetId"] == hook
    stored = await pg_pool.fetchrow(
        "SELECT secret, previous_secret FROM webhooks WHERE webhook_id = $1", uuid.UUID(hook)
    )
    assert stored is not None and stored["secret"] == secret and stored["previous_secret"]


async def test_bad_requests_and_other_tenants_webhooks(
    local_api: Api, pg_pool: asyncpg.Pool
) -> None:
    api = local_api
    other_tenant = f"t{uuid.uuid4().hex[:12]}"
    theirs = await create_webhook(pg_pool, other_tenant, "http://127.0.0.1:9/x", "whsec_theirs")
    try:
        # Another tenant's webhook, or none at all: 404, and theirs keeps its secret.
        await problem(
            await api.call("POST", api.path(f"/webhooks/{theirs}/secret/reset"), json={}), 404
        )
        await problem(
            await api.call("POST", api.path(f"/webhooks/{uuid.uuid4()}/secret/reset"), json={}),
            404,
        )
        assert (
            await pg_pool.fetchval("SELECT secret FROM webhooks WHERE webhook_id = $1", theirs)
            == "whsec_theirs"
        )
        created = await api.call(
            "POST",
            api.path("/webhooks"),
            json={"url": "http://127.0.0.1:9/h", "events": ["key.reset"]},
        )
        path = api.path(f"/webhooks/{(await created.json())['webhookId']}/secret/reset")
        for body in (
            {"graceSeconds": -1},
            {"graceSeconds": 7 * 24 * 3600 + 1},
            {"graceSeconds": "60"},
            {"graceSeconds": 60, "secret": "whsec_mine"},  # a secret is never chosen by a caller
        ):
            await problem(await api.call("POST", path, json=body), 422)
        await problem(await api.call("POST", api.path("/webhooks/nope/secret/reset")), 404)
    finally:
        await drop_webhooks(pg_pool, other_tenant)


async def test_a_reset_of_an_unknown_webhook_changes_nothing(pg_pool: asyncpg.Pool) -> None:
    """The store answers "not found" rather than creating anything."""
    found, until = await store.reset_secret(pg_pool, "t-none", uuid.uuid4(), "whsec_x", 60.0)
    assert (found, until) == (False, None)
