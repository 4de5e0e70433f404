"""``gatekeeper webhooks …`` and ``gatekeeper devices clear-conflict`` against a real admin API
on loopback, the session's real Postgres and Valkey, and (for ``test`` and ``reset-secret``) a
real dispatcher delivering to a receiver that checks every signature with the secret the CLI
printed.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis
from admincli_rig import Ran, _api_json, _clean_env, _table, cli
from conftest import Stores
from test_admin_helpers import Api, admin_settings, running_api
from webhook_rig import (
    DEADLINE,
    Receiver,
    dispatcher_settings,
    drop_webhooks,
    receiver,
    running_dispatcher,
)

__all__ = ["_clean_env"]  # fixture: the private environment

_SINK = "http://127.0.0.1:9/hook"  # never delivered to: no dispatcher runs in those tests


@pytest.fixture
async def local_api(
    stores: Stores, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> AsyncIterator[Api]:
    """The admin app with ``webhook_allow_private_targets`` on (as ``gatekeeper up`` runs it),
    so a receiver on loopback is a valid target."""
    settings = admin_settings(stores.pg_url, stores.redis_url, webhook_allow_private_targets=True)
    async with running_api(settings, pg_pool, redis_client, tenant) as client:
        yield client
    await drop_webhooks(pg_pool, tenant)


async def _create(api: Api, url: str, *flags: str) -> tuple[str, str, Ran]:
    """``webhooks create`` that worked: the webhook's id, the secret it printed, the run."""
    ran = await cli(api, "webhooks", "create", url, *flags)
    assert ran.code == 0, ran.err
    secret = ran.out.strip()
    assert ran.out == secret + "\n" and secret.startswith("whsec_")
    assert secret not in ran.err and ran.err.endswith("shown only this once:\n")
    webhook_id = ran.err.split()[2].rstrip(";")
    uuid.UUID(webhook_id)
    return webhook_id, secret, ran


async def test_create_list_show_pause_enable_delete(local_api: Api) -> None:
    api = local_api
    hook, secret, _ = await _create(
        api, _SINK, "--event", "device.blocked", "--event", "key.reset", "--description", "pager"
    )
    said: list[str] = []  # everything the other commands printed: no secret in any of it

    listed = await cli(api, "webhooks", "list")
    said += [listed.out, listed.err]
    assert listed.code == 0 and listed.err == ""
    header, row = _table(listed.out)
    assert header == ["WEBHOOK ID", "URL", "STATUS", "CREATED", "EVENTS"]
    assert row[:3] == [hook, _SINK, "enabled"] and row[4] == "device.blocked,key.reset"
    as_json = await cli(api, "webhooks", "list", "--json")
    said.append(as_json.out)
    assert json.loads(as_json.out) == await _api_json(api, api.path("/webhooks"))

    shown = await cli(api, "webhooks", "show", hook)
    said.append(shown.out)
    card = {
        k.strip(): v.strip() for k, v in (line.split(":", 1) for line in shown.out.splitlines())
    }
    assert card["Webhook ID"] == hook and card["URL"] == _SINK
    assert card["Events"] == "device.blocked, key.reset" and card["Description"] == "pager"
    assert card["Enabled"] == "yes" and card["Disabled at"] == "-"
    shown_json = await cli(api, "webhooks", "show", hook, "--json")
    said.append(shown_json.out)
    assert json.loads(shown_json.out) == await _api_json(api, api.path(f"/webhooks/{hook}"))

    paused = await cli(api, "webhooks", "pause", hook)
    assert (paused.code, paused.out) == (0, f"paused {hook}\n")
    assert not (await _api_json(api, api.path(f"/webhooks/{hook}")))["enabled"]
    assert _table((await cli(api, "webhooks", "list")).out)[1][2] == "disabled"
    refused = await cli(api, "webhooks", "test", hook)
    assert refused.code == 1 and refused.err.startswith("gatekeeper: Conflict (409): ")
    enabled = await cli(api, "webhooks", "enable", hook, "--json")
    said.append(enabled.out)
    assert enabled.code == 0 and json.loads(enabled.out)["enabled"] is True

    deleted = await cli(api, "webhooks", "delete", hook)
    assert (deleted.code, deleted.out) == (0, f"deleted {hook}\n")
    assert await _api_json(api, api.path("/webhooks")) == []
    empty = await cli(api, "webhooks", "list")
    assert (empty.code, empty.out, empty.err) == (0, "", "no webhooks\n")
    assert not any(secret in text for text in said)

    # --json prints the API's answer, the secret in it: a script asked for the document.
    created = await cli(api, "webhooks", "create", _SINK, "--event", "token.created", "--json")
    body = json.loads(created.out)
    assert body["secret"].startswith("whsec_") and body["events"] == ["token.created"]
    gone = await cli(api, "webhooks", "delete", body["webhookId"], "--json")
    assert json.loads(gone.out) == {"webhookId": body["webhookId"], "deleted": True}


async def _delivered(api: Api, hook: str, got: Receiver, event_id: str) -> None:
    """Until the receiver answered 2xx to the event and the dispatcher recorded it delivered
    (it commits after the answer): a poll with a deadline."""
    await got.until(lambda r: event_id in r.delivered(), f"test event {event_id}")
    path = api.path(f"/webhooks/{hook}/deliveries")
    async with asyncio.timeout(DEADLINE):
        while True:
            states = {d["eventId"]: d["state"] for d in await _api_json(api, path)}
            if states.get(event_id) == "delivered":
                return
            await asyncio.sleep(0.02)


async def test_test_events_are_signed_with_the_secret_printed(
    local_api: Api, stores: Stores, pg_pool: asyncpg.Pool
) -> None:
    """The secret `create` and `reset-secret` print is the one deliveries are signed with."""
    api = local_api
    async with receiver() as got, running_dispatcher(pg_pool, dispatcher_settings(stores.pg_url)):
        hook, got.secret, _ = await _create(api, got.url, "--event", "device.blocked")
        queued = await cli(api, "webhooks", "test", hook)
        assert queued.code == 0 and queued.out.startswith("queued test event ")
        assert f"gatekeeper webhooks deliveries {hook}" in queued.err
        first = queued.out.split()[3]
        await _delivered(api, hook, got, first)

        deliveries = await cli(api, "webhooks", "deliveries", hook)
        assert deliveries.code == 0 and deliveries.err == ""
        header, row = _table(deliveries.out)
        assert header == [
            "CREATED", "EVENT ID", "TYPE", "DEVICE", "STATE", "ATTEMPTS", "NEXT ATTEMPT",
            "LAST ATTEMPT",
        ]  # fmt: skip
        assert row[1:7] == [first, "webhook.test", "-", "delivered", "1", "-"]
        assert re.fullmatch(r"HTTP 200 in [0-9]+ ms", row[7]), row[7]
        as_json = await cli(api, "webhooks", "deliveries", hook, "--json")
        path = api.path(f"/webhooks/{hook}/deliveries")
        assert json.loads(as_json.out) == await _api_json(api, path)

        # A new secret with a grace period: deliveries verify with it (the old one signs too).
        old = got.secret
        reset = await cli(api, "webhooks", "reset-secret", hook, "--grace", "60")
        assert reset.code == 0, reset.err
        got.secret = reset.out.strip()
        assert reset.out == got.secret + "\n" and got.secret.startswith("whsec_")
        assert got.secret != old and got.secret not in reset.err
        assert "(the old one signs too until 20" in reset.err and "Z); it is shown" in reset.err
        assert reset.err.endswith("shown only this once:\n")
        second = json.loads((await cli(api, "webhooks", "test", hook, "--json")).out)["eventId"]
        await _delivered(api, hook, got, second)

        # Without one: the new secret alone signs.
        reset = await cli(api, "webhooks", "reset-secret", hook)
        got.secret = reset.out.strip()
        assert reset.code == 0 and "the old one signs no more" in reset.err
        third = (await cli(api, "webhooks", "test", hook)).out.split()[3]
        await _delivered(api, hook, got, third)
        assert got.bad_signatures == 0
        rows = json.loads((await cli(api, "webhooks", "deliveries", hook, "--json")).out)
        assert [d["eventId"] for d in rows] == [third, second, first]
        listed = await cli(api, "webhooks", "list")
        assert got.secret not in listed.out and old not in listed.out


async def test_deliveries_follow_limit_and_say_when_more_remain(local_api: Api) -> None:
    api = local_api
    hook, _, _ = await _create(api, _SINK, "--event", "device.blocked")
    for _ in range(3):  # queued, never delivered: no dispatcher runs here
        assert (await cli(api, "webhooks", "test", hook)).code == 0
    # The deliveries are written when a dispatcher leases the events; none has.
    none = await cli(api, "webhooks", "deliveries", hook)
    assert (none.code, none.out, none.err) == (0, "", "no deliveries\n")
    for n in range(3):
        await cli(api, "webhooks", "create", f"http://127.0.0.1:9/h{n}", "--event", "key.reset")
    limited = await cli(api, "webhooks", "list", "--limit", "2", "--json")
    assert len(json.loads(limited.out)) == 2
    assert limited.err == "more webhooks: use --all or a bigger --limit\n"
    everything = await cli(api, "webhooks", "list", "--all", "--json")
    assert len(json.loads(everything.out)) == 4 and everything.err == ""


# --- errors ----------------------------------------------------------------------------------


async def test_refusals_are_one_clear_line_and_exit_1(api: Api) -> None:
    """The default admin app refuses private targets: a loopback URL is the API's 422."""
    private = await cli(api, "webhooks", "create", _SINK, "--event", "device.blocked")
    assert private.code == 1 and private.out == ""
    first, second = private.err.splitlines()
    assert first == "gatekeeper: Validation failed (422): Invalid values: url"
    assert second.startswith("  url: ")

    for url, event, field in (
        ("ftp://hooks.example.com/x", "device.blocked", "url"),
        ("http://127.0.0.1:9/h", "device.exploded", "events"),
    ):
        ran = await cli(api, "webhooks", "create", url, "--event", event)
        assert ran.code == 1 and ran.out == ""
        first, second = ran.err.splitlines()
        assert first.startswith("gatekeeper: Validation failed (422): Invalid values: ")
        assert field in first and second.startswith(f"  {field}")

    unknown = str(uuid.uuid4())
    for argv in (
        ["show", unknown],
        ["pause", unknown],
        ["enable", unknown],
        ["delete", unknown],
        ["test", unknown],
        ["deliveries", unknown],
        ["reset-secret", unknown],
        ["show", "not-a-uuid"],
    ):
        ran = await cli(api, "webhooks", *argv)
        assert (ran.code, ran.out) == (1, ""), argv
        assert ran.err == "gatekeeper: Not found (404): No such webhook\n", argv

    too_long = await cli(api, "webhooks", "reset-secret", unknown, "--grace", "9999999")
    assert too_long.code == 1 and too_long.err.startswith("gatekeeper: Validation failed (422)")
    # Usage errors are argparse's: exit 2 before any call.
    for bad in (["reset-secret", unknown, "--grace", "-1"], ["create", _SINK]):
        with pytest.raises(SystemExit) as exited:
            await cli(api, "webhooks", *bad)
        assert exited.value.code == 2, bad


async def test_a_token_without_webhook_write_is_refused(local_api: Api) -> None:
    api = local_api
    hook, _, _ = await _create(api, _SINK, "--event", "device.blocked")
    reader = api.token(scopes=["Webhook.Read"])
    listed = await cli(api, "webhooks", "list", "--json", token=reader)
    assert listed.code == 0 and [h["webhookId"] for h in json.loads(listed.out)] == [hook]
    lacking = "gatekeeper: Forbidden (403): The token lacks the scope Webhook.Write\n"
    for argv in (
        ["create", _SINK, "--event", "device.blocked"],
        ["pause", hook],
        ["delete", hook],
        ["test", hook],
        ["reset-secret", hook],
    ):
        ran = await cli(api, "webhooks", *argv, token=reader)
        assert (ran.code, ran.out, ran.err) == (1, "", lacking), argv
    devices_only = api.token(scopes=["Device.Read", "Device.Write"])
    ran = await cli(api, "webhooks", "list", token=devices_only)
    assert (ran.code, ran.err) == (1, "gatekeeper: Forbidden (403): The token lacks the scope"
                                      " Webhook.Read\n")  # fmt: skip
    assert (await _api_json(api, api.path(f"/webhooks/{hook}")))["enabled"] is True


# --- devices clear-conflict ----------------------------------------------------------------------


async def test_show_prints_the_conflict_and_clear_conflict_clears_it(
    api: Api, pg_pool: asyncpg.Pool
) -> None:
    await api.create_device("twin")
    # As the recorder's flush sets it when the device comes back to hardware it had left.
    at = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
    marked = await pg_pool.execute(
        "UPDATE device_activity SET conflict_at = $3 WHERE tenant_id = $1 AND device_id = $2",
        api.tenant,
        "twin",
        at,
    )
    assert marked == "UPDATE 1"

    def conflict(ran: Ran) -> str:
        (line,) = [ln for ln in ran.out.splitlines() if ln.startswith("Clone conflict:")]
        return line.split(":", 1)[1].strip()

    shown = await cli(api, "devices", "show", "twin")
    assert shown.code == 0 and conflict(shown) == "2026-11-02T08:30:00.000000Z"

    denied = await cli(
        api, "devices", "clear-conflict", "twin", token=api.token(scopes=["Device.Read"])
    )
    assert denied.code == 1 and denied.err.startswith("gatekeeper: Forbidden (403)")
    cleared = await cli(api, "devices", "clear-conflict", "twin")
    assert (cleared.code, cleared.out) == (0, "cleared twin's clone conflict\n")
    assert conflict(await cli(api, "devices", "show", "twin")) == "-"
    again = await cli(api, "devices", "clear-conflict", "twin", "--json")  # idempotent
    assert again.code == 0 and json.loads(again.out)["conflictAt"] is None
    audit = await _api_json(api, api.path("/audit?action=device.conflict_clear"))
    assert [e["targetId"] for e in audit] == ["twin", "twin"]

    missing = await cli(api, "devices", "clear-conflict", "ghost")
    assert missing.code == 1 and missing.err == "gatekeeper: Not found (404): No such device\n"


async def test_a_failing_webhook_and_an_attempt_without_answer(
    local_api: Api, pg_pool: asyncpg.Pool
) -> None:
    """What the dispatcher writes for a receiver that does not answer: rows put in with SQL."""
    api = local_api
    hook, _, _ = await _create(api, _SINK, "--event", "device.blocked")
    await pg_pool.execute(
        "UPDATE webhooks SET failing_since = now() WHERE webhook_id = $1", uuid.UUID(hook)
    )
    delivery: int = await pg_pool.fetchval(
        "INSERT INTO webhook_deliveries (webhook_id, tenant_id, outbox_id, event_id, device_id,"
        " body, state, attempts, next_attempt_at)"
        " VALUES ($1, $2, 1, $3, 'dev-1', $4, 'pending', 1, '2099-01-01T00:00:00Z') RETURNING id",
        uuid.UUID(hook),
        api.tenant,
        uuid.uuid4(),
        json.dumps({"type": "device.blocked"}),
    )
    await pg_pool.execute(
        "INSERT INTO webhook_attempts (delivery_id, webhook_id, tenant_id, attempted_at, status,"
        " duration_ms, error) VALUES ($1, $2, $3, now(), NULL, 10000.4, 'timed out\x1b[2J')",
        delivery,
        uuid.UUID(hook),
        api.tenant,
    )
    assert _table((await cli(api, "webhooks", "list")).out)[1][2] == "failing"
    _, row = _table((await cli(api, "webhooks", "deliveries", hook)).out)
    assert row[2:] == [
        "device.blocked", "dev-1", "pending", "1", "2099-01-01 00:00:00Z",
        "no answer in 10000 ms: timed out?[2J",
    ]  # fmt: skip
