"""The webhook dispatcher against real Postgres and real receivers on loopback (issue 14):
signed envelopes to the right webhooks only, retries in order per device, two dispatchers
sharing the queue, a slow receiver holding neither the admin API nor other webhooks, and the
target checked again at each attempt."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from itertools import groupby

import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import Stores
from test_admin_helpers import admin_settings, running_api
from webhook_rig import (
    Receiver,
    create_webhook,
    dispatcher_settings,
    drop_webhooks,
    emit,
    receiver,
    running_dispatcher,
)

from admin_api.app import create_app
from admin_api.metrics import AdminMetrics
from admin_api.webhook_dispatcher import (
    USER_AGENT,
    PublicOnlyResolver,
    WebhookDispatcher,
    webhook_dispatcher_ctx,
)
from gatekeeper.store.clients import open_pg_pool


@pytest.fixture(autouse=True)
async def _drop_webhooks(pg_pool: asyncpg.Pool, tenant: str) -> AsyncIterator[None]:
    yield
    await drop_webhooks(pg_pool, tenant)


def _per_device(got: Receiver, event_ids: list[str]) -> dict[str | None, list[str]]:
    """The event ids each device's requests carried, in arrival order (every request)."""
    ours = set(event_ids)
    hits = sorted(
        (h for h in got.hits if h.event_id in ours), key=lambda h: str(h.device_id)
    )  # sorted() is stable: arrival order within a device
    return {
        device: [h.event_id for h in rows] for device, rows in groupby(hits, lambda h: h.device_id)
    }


async def test_each_event_goes_signed_to_the_webhooks_that_asked_for_it(
    stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    async with receiver() as got, receiver() as other, receiver() as disabled:
        hook = await create_webhook(pg_pool, tenant, got.url, got.secret, ("device.blocked",))
        second = await create_webhook(pg_pool, tenant, other.url, other.secret, ("key.reset",))
        off = await create_webhook(pg_pool, tenant, disabled.url, disabled.secret)
        await pg_pool.execute("UPDATE webhooks SET is_enabled = false WHERE webhook_id = $1", off)
        blocked = await emit(pg_pool, tenant, "device.blocked", {"deviceId": "d1"}, device_id="d1")
        await emit(pg_pool, tenant, "token.created", {"tokenId": "x"})  # nobody asked
        await emit(pg_pool, f"{tenant}x", "device.blocked", {"deviceId": "d1"}, device_id="d1")
        test = await emit(pg_pool, tenant, "webhook.test", {"webhookId": str(hook)})
        reset = await emit(pg_pool, tenant, "key.reset", {"deviceId": "d2"}, device_id="d2")

        async with running_dispatcher(pg_pool, dispatcher_settings(stores.pg_url)):
            await got.until(lambda r: len(r.hits) >= 2, "two events")
            await other.until(lambda r: len(r.hits) >= 1, "one event")

    assert sorted(got.delivered()) == sorted([blocked, test])
    assert other.delivered() == [reset]  # the test event went to the webhook it named only
    assert disabled.hits == []
    assert got.bad_signatures == other.bad_signatures == 0
    hit = next(h for h in got.hits if h.event_id == blocked)
    assert list(hit.body) == ["id", "type", "createdAt", "tenantId", "data"]
    assert hit.body["type"] == "device.blocked" and hit.body["tenantId"] == tenant
    assert hit.body["data"] == {"deviceId": "d1"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", hit.body["createdAt"])
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["User-Agent"] == USER_AGENT
    rows = await pg_pool.fetch(
        "SELECT d.state, d.attempts, a.status, a.error, a.duration_ms FROM webhook_deliveries d"
        " JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.webhook_id = $1",
        second,
    )
    assert [(r["state"], r["attempts"], r["status"], r["error"]) for r in rows] == [
        ("delivered", 1, 200, None)
    ]
    assert rows[0]["duration_ms"] > 0


async def test_a_receiver_failing_three_times_gets_each_event_again_in_order(
    stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    async with receiver() as got:
        got.answer = lambda n: 500 if n < 3 else 200
        hook = await create_webhook(pg_pool, tenant, got.url, got.secret)
        sent: list[str] = []
        for i in range(4):
            for device in ("a", "b", "c"):
                data = {"deviceId": device, "n": i}
                sent.append(await emit(pg_pool, tenant, "device.changed", data, device_id=device))
        sent.append(await emit(pg_pool, tenant, "device.changed", {"n": "no device"}))

        async with running_dispatcher(pg_pool, dispatcher_settings(stores.pg_url)):
            await got.until(lambda r: len(r.delivered()) >= len(sent), "every event delivered")

    assert sorted(got.delivered()) == sorted(sent)  # each once
    assert len(got.hits) == len(sent) + 3  # the three refused, once more each
    failed = [h.event_id for h in got.hits if h.status == 500]
    assert len(failed) == 3
    for event_id in failed:
        assert [h.status for h in got.hits if h.event_id == event_id] == [500, 200]
    # Per device, the requests (failed ones included) follow the order the events were made:
    # no later event went out while an earlier one of its device was undelivered.
    for owner, ids in _per_device(got, sent).items():
        if owner is None:
            continue
        order = [e for e in sent if e in set(ids)]
        assert [k for k, _ in groupby(ids)] == order, owner
    attempts = await pg_pool.fetchval(
        "SELECT count(*) FROM webhook_attempts WHERE webhook_id = $1", hook
    )
    assert attempts == len(sent) + 3
    assert got.bad_signatures == 0


async def test_two_dispatchers_deliver_each_event_once(
    stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    async with receiver() as got:
        await create_webhook(pg_pool, tenant, got.url, got.secret)
        sent = [
            await emit(
                pg_pool,
                tenant,
                "device.changed",
                {"deviceId": f"d{i % 20}", "n": i},
                device_id=None if i % 10 == 0 else f"d{i % 20}",
            )
            for i in range(200)
        ]
        second_pool = await open_pg_pool(stores.pg_url, min_size=1, max_size=5)
        settings = dispatcher_settings(stores.pg_url)
        try:
            async with (
                running_dispatcher(pg_pool, settings),
                running_dispatcher(second_pool, settings),
            ):
                await got.until(lambda r: len(r.hits) >= len(sent), "200 deliveries")
                # Both quiet (nothing more is claimable), so a duplicate would show here.
                await _until_settled(pg_pool, tenant)
        finally:
            await second_pool.close()

    counts = {event_id: got.delivered().count(event_id) for event_id in sent}
    assert set(counts.values()) == {1}
    assert len(got.hits) == 200
    assert got.bad_signatures == 0


async def _until_settled(pool: asyncpg.Pool, tenant: str) -> None:
    async with asyncio.timeout(30):
        while await pool.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE tenant_id = $1 AND state = 'pending'",
            tenant,
        ):
            await asyncio.sleep(0.02)


async def test_a_slow_receiver_holds_neither_the_api_nor_other_webhooks(
    stores: Stores,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    """The receiver of one webhook holds every request open; meanwhile the admin API (same
    process, same loop, same pool) answers and the other webhook gets all its events."""
    async with receiver() as slow, receiver() as fast:
        slow.gate = asyncio.Event()
        await create_webhook(pg_pool, tenant, slow.url, slow.secret)
        await create_webhook(pg_pool, tenant, fast.url, fast.secret)
        sent = [
            await emit(pg_pool, tenant, "device.changed", {"deviceId": f"d{i}"}, device_id=f"d{i}")
            for i in range(12)
        ]
        settings = admin_settings(stores.pg_url, stores.redis_url)
        async with (
            running_api(settings, pg_pool, redis_client, tenant) as api,
            running_dispatcher(pg_pool, dispatcher_settings(stores.pg_url), per_webhook=4),
        ):
            await slow.until(lambda r: r.waiting == 4, "the slow receiver to hold 4 requests")
            await fast.until(lambda r: len(r.delivered()) == len(sent), "the fast webhook")
            for _ in range(3):
                response = await api.call("GET", api.path("/devices"))
                assert response.status == 200
            created = await api.create_device("made-while-blocked")
            assert created["deviceId"] == "made-while-blocked"
            # All of that happened with the slow receiver's requests still open.
            assert slow.waiting == 4 and slow.hits == []
            slow.gate.set()
            await slow.until(lambda r: len(r.delivered()) == len(sent), "the slow webhook")
    assert sorted(fast.delivered()) == sorted(sent)
    assert sorted(slow.delivered()) == sorted(sent)


async def test_a_tenant_of_slow_receivers_holds_only_its_share(
    stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """One tenant's two webhooks hang; another tenant's webhook still gets every event: the
    hanging tenant holds its share of the slots (4 of 8 here), not all of them."""
    other = tenant + "b"
    async with receiver() as hang1, receiver() as hang2, receiver() as fast:
        hang1.gate, hang2.gate = asyncio.Event(), asyncio.Event()
        await create_webhook(pg_pool, tenant, hang1.url, hang1.secret)
        await create_webhook(pg_pool, tenant, hang2.url, hang2.secret)
        await create_webhook(pg_pool, other, fast.url, fast.secret)
        for i in range(12):
            await emit(pg_pool, tenant, "device.changed", {"deviceId": f"d{i}"}, device_id=f"d{i}")
        sent = [
            await emit(pg_pool, other, "device.changed", {"deviceId": f"o{i}"}, device_id=f"o{i}")
            for i in range(6)
        ]
        settings = dispatcher_settings(stores.pg_url)
        try:
            async with running_dispatcher(
                pg_pool, settings, max_in_flight=8, per_webhook=4, per_tenant=4
            ):
                await fast.until(lambda r: len(r.delivered()) == len(sent), "the other tenant")
                assert hang1.waiting + hang2.waiting == 4
                assert hang1.hits == [] and hang2.hits == []
                hang1.gate.set()
                hang2.gate.set()
        finally:
            await drop_webhooks(pg_pool, other)
    assert sorted(fast.delivered()) == sorted(sent)


async def test_the_target_is_checked_again_at_each_attempt(
    stores: Stores, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    """A webhook whose host now resolves to a private address (here: one stored before the
    rule applied) gets no request; the attempt says why, and the delivery waits to retry."""
    async with receiver() as got:
        hook = await create_webhook(pg_pool, tenant, got.url, got.secret)
        await emit(pg_pool, tenant, "device.blocked", {"deviceId": "d"}, device_id="d")
        settings = dispatcher_settings(stores.pg_url, webhook_allow_private_targets=False)
        dispatcher = WebhookDispatcher(pg_pool, settings, AdminMetrics())
        try:
            async with asyncio.timeout(30):
                while not await pg_pool.fetchval(
                    "SELECT count(*) FROM webhook_attempts WHERE webhook_id = $1", hook
                ):
                    await dispatcher.run_once()
                    await dispatcher.wait_idle()
        finally:
            await dispatcher.close()
    assert got.hits == []
    attempt = await pg_pool.fetchrow(
        "SELECT status, error FROM webhook_attempts WHERE webhook_id = $1", hook
    )
    assert attempt is not None and attempt["status"] is None
    assert attempt["error"].startswith("target refused: ")
    assert "private" in attempt["error"] and got.secret not in attempt["error"]
    delivery = await pg_pool.fetchrow(
        "SELECT state, attempts FROM webhook_deliveries WHERE webhook_id = $1", hook
    )
    assert delivery is not None and (delivery["state"], delivery["attempts"]) == ("pending", 1)


async def test_the_connection_resolves_names_to_public_addresses_only() -> None:
    """The check before the attempt and the connection resolve the name separately; the
    connection's resolver refuses private answers too, so a name cannot rebind in between."""
    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="private, loopback or link-local"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_admin_service_runs_the_dispatcher_unless_turned_off(
    stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, enabled: bool
) -> None:
    settings = admin_settings(stores.pg_url, stores.redis_url, webhook_dispatcher=enabled)
    app = create_app(settings, pg_pool, redis_client)
    running = webhook_dispatcher_ctx(app)
    await anext(running)
    names = {task.get_name() for task in asyncio.all_tasks() if not task.done()}
    assert ("admin-webhook-dispatcher" in names) is enabled
    with pytest.raises(StopAsyncIteration):
        await anext(running)  # stops it
    names = {task.get_name() for task in asyncio.all_tasks() if not task.done()}
    assert "admin-webhook-dispatcher" not in names
