"""The admin CLI (`gatekeeper devices|tokens|audit`) against a real admin API on loopback, with
the session's real Postgres and Valkey: output, ``--json``, paging, errors and exit codes.

Most commands run ``gatekeeper.runtime.cli.main`` in a thread (the API serves on this test's
event loop, so the command cannot block it); the start-up failures run the real
``python -m gatekeeper`` in a subprocess, with an environment of their own.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from admincli_rig import (
    _api_json,
    _clean_env,
    _table,
    cli,
)
from test_admin_helpers import Api
from test_tls_listener import ca

from gatekeeper.domain.credentials import TOKEN_PREFIX
from gatekeeper.runtime import admin_client

__all__ = ["_clean_env", "ca"]  # fixtures: the private environment, the throwaway CA


async def test_list_as_a_table_and_as_json(api: Api) -> None:
    await api.create_device("gate-a", name="Gate A")
    await api.create_device("gate-b")
    await api.call("POST", api.device_path("gate-b", "/block"), json={"reason": "lost"})

    ran = await cli(api, "devices", "list")
    assert ran.code == 0 and ran.err == ""
    header, *rows = ran.out.splitlines()
    assert header.split() == [
        "DEVICE", "ID", "NAME", "APPLICATION", "MANUFACTURER", "MODEL", "STATUS", "LAST",
        "ACTIVITY",
    ]  # fmt: skip
    assert rows[0].split()[:3] == ["gate-b", "-", "-"] and "blocked" in rows[0]
    assert rows[1].split()[:3] == ["gate-a", "Gate", "A"] and "active" in rows[1]

    ran = await cli(api, "devices", "list", "--json")
    assert ran.code == 0 and json.loads(ran.out) == await _api_json(api, api.path("/devices"))

    only = await cli(api, "devices", "list", "--blocked", "only", "--json")
    assert [d["deviceId"] for d in json.loads(only.out)] == ["gate-b"]
    found = await cli(api, "devices", "list", "-q", "GATE a")
    assert [r.split()[0] for r in found.out.splitlines()[1:]] == ["gate-a"]
    none = await cli(api, "devices", "list", "-q", "nothing-like-it")
    assert none.code == 0 and none.out == "" and none.err == "no devices\n"


async def test_list_follows_pages_on_demand(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(5):
        await api.create_device(f"dev-{n}")
    everything = [d["deviceId"] for d in await _api_json(api, api.path("/devices"))]
    # Pages of two, so five devices take three requests, each following the API's Link.
    monkeypatch.setattr(admin_client, "PAGE_MAX", 2)

    ran = await cli(api, "devices", "list", "--all", "--json")
    assert [d["deviceId"] for d in json.loads(ran.out)] == everything and ran.err == ""

    ran = await cli(api, "devices", "list", "--limit", "3", "--json")
    assert [d["deviceId"] for d in json.loads(ran.out)] == everything[:3]
    assert ran.err.startswith("more devices: use --all or a bigger --limit")
    cursor = ran.err.rsplit("--cursor ", 1)[1].strip()

    rest = await cli(api, "devices", "list", "--cursor", cursor)
    assert [r.split()[0] for r in rest.out.splitlines()[1:]] == everything[3:]
    assert rest.err == ""


async def test_show_and_rename(api: Api) -> None:
    await api.create_device("kiosk-7", description="by the door")
    ran = await cli(api, "devices", "show", "kiosk-7")
    assert ran.code == 0
    card = dict(line.split(":", 1) for line in ran.out.splitlines())
    assert card["Device ID"].strip() == "kiosk-7" and card["Name"].strip() == "-"
    assert card["Description"].strip() == "by the door" and card["Blocked"].strip() == "no"

    ran = await cli(api, "devices", "rename", "kiosk-7", "Front kiosk")
    assert ran.code == 0 and ran.out == "renamed kiosk-7 to 'Front kiosk'\n"
    device = await _api_json(api, api.device_path("kiosk-7"))
    assert device["name"] == "Front kiosk"
    shown = await cli(api, "devices", "show", "kiosk-7", "--json")
    assert json.loads(shown.out) == device

    cleared = await cli(api, "devices", "rename", "kiosk-7", "--clear", "--json")
    assert cleared.code == 0 and json.loads(cleared.out)["name"] is None


async def test_block_with_a_reason_then_unblock_and_audit(api: Api) -> None:
    await api.create_device("tab-1")
    ran = await cli(api, "devices", "block", "tab-1", "--reason", "reported stolen")
    assert ran.code == 0 and ran.out == "blocked tab-1 (reason: reported stolen)\n"
    device = await _api_json(api, api.device_path("tab-1"))
    assert device["isBlocked"] and device["blockReason"] == "reported stolen"

    ran = await cli(api, "devices", "unblock", "tab-1", "--json")
    assert ran.code == 0 and json.loads(ran.out)["isBlocked"] is False

    audit = await cli(api, "audit")
    assert audit.code == 0
    header, *rows = _table(audit.out)
    assert header == ["AT", "ACTOR", "ACTION", "TARGET", "REASON"]
    actions = [(r[2], r[3], r[4]) for r in rows]
    assert actions[:3] == [
        ("device.unblock", "device/tab-1", "-"),
        ("device.block", "device/tab-1", "reported stolen"),
        ("device.create", "device/tab-1", "-"),
    ]
    entries = json.loads((await cli(api, "audit", "--json", "--limit", "2")).out)
    assert entries == (await _api_json(api, api.path("/audit")))[:2]
    blocks = await cli(api, "audit", "--action", "device.block", "--target", "tab-1", "--json")
    assert [(e["action"], e["reason"]) for e in json.loads(blocks.out)] == [
        ("device.block", "reported stolen")
    ]
    future = await cli(api, "audit", "--since", "2999-01-01T00:00:00Z")
    assert future.code == 0 and future.out == "" and future.err == "no audit entries\n"
    bad = await cli(api, "audit", "--since", "yesterday")
    assert bad.code == 1 and bad.err.startswith("gatekeeper: Bad request (400)")


async def test_history(api: Api, pg_pool: asyncpg.Pool) -> None:
    await api.create_device("hist")
    first = {
        "application": "crew",
        "applicationVersion": "1.0",
        "os": "android",
        "osVersion": "13",
        "manufacturer": "acme",
        "model": "x1",
    }
    second = {**first, "applicationVersion": "1.1"}
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
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
    ran = await cli(api, "devices", "history", "hist")
    assert ran.code == 0
    assert _table(ran.out) == [
        ["RECORDED AT", "CHANGE"],
        ["2024-05-01 01:00:00Z", "applicationVersion: 1.0 -> 1.1"],
        [
            "2024-05-01 00:00:00Z",
            "first seen: application=crew, applicationVersion=1.0, os=android, osVersion=13,"
            " manufacturer=acme, model=x1",
        ],
    ]
    as_json = await cli(api, "devices", "history", "hist", "--json")
    assert json.loads(as_json.out) == await _api_json(api, api.device_path("hist", "/history"))


async def test_cells_cannot_drive_the_terminal(api: Api) -> None:
    """A name (or a device's own header values) holding escape sequences prints inert."""
    await api.create_device("esc", name="evil\x1b]0;owned\x07\x1b[2J")
    ran = await cli(api, "devices", "list")
    assert "\x1b" not in ran.out and "\x07" not in ran.out
    assert "evil?]0;owned??[2J" in ran.out
    shown = await cli(api, "devices", "show", "esc")
    assert "\x1b" not in shown.out and "evil?]0;owned??[2J" in shown.out


# --- tokens ----------------------------------------------------------------------------------


async def test_tokens_create_list_revoke(api: Api) -> None:
    created = await cli(api, "tokens", "create", "ci deploys")
    assert created.code == 0
    secret = created.out.strip()
    assert created.out == secret + "\n" and secret.startswith(TOKEN_PREFIX)
    assert "shown only this once" in created.err and secret not in created.err
    token_id = created.err.split()[2]
    uuid.UUID(token_id)

    listed = await cli(api, "tokens", "list")
    assert listed.code == 0 and secret not in listed.out
    header, row = _table(listed.out)
    assert header[:3] == ["TOKEN ID", "NAME", "PREFIX"] and row[:2] == [token_id, "ci deploys"]
    as_json = json.loads((await cli(api, "tokens", "list", "--json")).out)
    assert as_json == await _api_json(api, api.path("/tokens"))
    assert all("token" not in t for t in as_json)

    revoked = await cli(api, "tokens", "revoke", token_id)
    assert revoked.code == 0 and revoked.out == f"revoked {token_id}\n"
    (after,) = await _api_json(api, api.path("/tokens"))
    assert after["revokedAt"] is not None

    with_expiry = await cli(
        api, "tokens", "create", "short", "--expires-at", "2099-01-01T00:00:00Z", "--json"
    )
    body = json.loads(with_expiry.out)
    assert body["expiresAt"].startswith("2099-01-01") and body["token"].startswith(TOKEN_PREFIX)


# --- errors ----------------------------------------------------------------------------------
