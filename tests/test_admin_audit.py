"""The audit log's filters: exact target, actor and action, and a time range; with paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import asyncpg
from test_admin_helpers import Api, problem


async def _audit(api: Api, **query: str) -> list[dict[str, object]]:
    response = await api.call("GET", api.path("/audit") + "?" + urlencode(query))
    assert response.status == 200, await response.text()
    entries: list[dict[str, object]] = await response.json()
    return entries


async def test_audit_filters_by_target_actor_action_and_time(
    api: Api, pg_pool: asyncpg.Pool
) -> None:
    for device in ("alpha", "beta"):
        await api.create_device(device)
        await api.call("POST", api.device_path(device, "/block"), json={"reason": "lost"})
    headers = {"Authorization": f"Bearer {api.token(subject='night-shift')}"}
    await api.call("POST", api.device_path("beta", "/unblock"), headers=headers)

    assert [e["action"] for e in await _audit(api, targetId="beta")] == [
        "device.unblock",
        "device.block",
        "device.create",
    ]
    assert [e["targetId"] for e in await _audit(api, action="device.block")] == ["beta", "alpha"]
    assert [(e["actor"], e["action"]) for e in await _audit(api, actor="night-shift")] == [
        ("night-shift", "device.unblock")
    ]
    assert await _audit(api, targetId="alpha", action="device.unblock") == []

    # Move alpha's entries an hour back: since is inclusive, until exclusive.
    await pg_pool.execute(
        "UPDATE audit_log SET at = at - interval '1 hour' WHERE tenant_id = $1"
        " AND target_id = 'alpha'",
        api.tenant,
    )
    cut = (datetime.now(UTC) - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    assert {e["targetId"] for e in await _audit(api, since=cut)} == {"beta"}
    assert {e["targetId"] for e in await _audit(api, until=cut)} == {"alpha"}
    # Filters hold across pages.
    page = await api.call(
        "GET", api.path("/audit") + "?" + urlencode({"targetId": "beta", "limit": 2})
    )
    link = page.headers["Link"]
    rest = await (await api.call("GET", link[link.index("<") + 1 : link.index(">")])).json()
    assert [e["action"] for e in await page.json() + rest] == [
        "device.unblock",
        "device.block",
        "device.create",
    ]


async def test_audit_filters_refuse_bad_values(api: Api) -> None:
    for query in (
        {"since": "yesterday"},
        {"until": "2026-02-30T00:00:00Z"},
        {"since": "2026-11-22T10:00:00"},  # no offset: which zone?
        {"actor": "x\x00y"},
        {"action": "a" * 201},
        {"targetId": "1", "unknown": "2"},
    ):
        body = await problem(
            await api.call("GET", api.path("/audit") + "?" + urlencode(query)), 400
        )
        assert body["errors"], query
