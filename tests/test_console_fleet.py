"""Fleet operations in the console: bulk block and unblock on the list's filter, shown as a dry
run's count before anything changes, and shadow blocks shown apart from enforced ones."""

from __future__ import annotations

import redis.asyncio as aioredis
from console_rig import Console
from test_admin_helpers import Api

from gatekeeper.domain import edgeview


async def _blocked(api: Api, device_id: str) -> tuple[bool, str | None]:
    device = await (await api.call("GET", api.device_path(device_id))).json()
    return device["isBlocked"], device["blockMode"]


async def test_a_shadow_block_is_shown_apart_and_enforced_in_one_step(
    console: Console, api: Api, redis_client: aioredis.Redis
) -> None:
    await api.create_device("sh-1", name="Kiosk")
    confirm = await console.text(console.device_url("sh-1") + "?confirm=block")
    assert 'name="mode" value="enforce" checked' in confirm and 'value="shadow"' in confirm
    page = await console.submit(
        console.device_url("sh-1", "/block"), {"reason": "trial", "mode": "shadow"}
    )
    assert "Shadow block: requests are forwarded and counted, not denied (trial)" in page
    assert ">Enforce block</button>" in page and ">Unblock</button>" in page
    assert await _blocked(api, "sh-1") == (True, "shadow")
    listed = await console.text(console.url("/devices"))
    assert (
        '<tr class="shadow">' in listed
        and '<span class="badge shadow">Shadow block</span>' in listed
    )
    member = edgeview.member(api.tenant, "sh-1")
    assert not await redis_client.sismember(edgeview.BLOCKED_SET, member)

    enforced = await console.submit(
        console.device_url("sh-1", "/block"), {"reason": "trial", "mode": "enforce"}
    )
    assert "Blocked: trial" in enforced and "Enforce block" not in enforced
    assert await _blocked(api, "sh-1") == (True, "enforce")
    assert await redis_client.sismember(edgeview.BLOCKED_SET, member)


async def test_bulk_block_shows_the_dry_run_count_then_blocks_the_filter(
    console: Console, api: Api, redis_client: aioredis.Redis
) -> None:
    for device_id in ("fleet-a1", "fleet-a2", "fleet-a3", "other-b1"):
        await api.create_device(device_id)
    await api.call("POST", api.device_path("fleet-a3", "/block"), json={"reason": "lost"})
    listed = await console.text(console.url("/devices?q=fleet"))
    assert "Block all matching…</a>" in listed and "Unblock all matching…</a>" in listed

    confirm = await console.text(console.url("/devices?blocked=all&q=fleet&bulk=block"))
    # The dry run's count before anything changes: 3 match, 2 would change.
    assert "3 devices match this filter; 2 would be blocked." in confirm
    assert (
        ">Block 2 devices</button>" in confirm
        and '<label for="bulk-reason">Reason</label>' in confirm
    )
    assert await _blocked(api, "fleet-a1") == (False, None)

    done = await console.submit(
        console.url("/devices/bulk-block"), {"q": "fleet", "blocked": "all", "reason": "recall"}
    )
    assert "2 of 3 matching devices blocked." in done
    for device_id in ("fleet-a1", "fleet-a2"):
        assert await _blocked(api, device_id) == (True, "enforce")
        member = edgeview.member(api.tenant, device_id)
        assert await redis_client.sismember(edgeview.BLOCKED_SET, member)
    assert await _blocked(api, "other-b1") == (False, None)
    audit = await (await api.call("GET", api.path("/audit?action=device.bulk-block"))).json()
    assert len(audit) == 1 and audit[0]["reason"] == "recall"

    unblock = await console.text(console.url("/devices?blocked=only&q=fleet&bulk=unblock"))
    assert "3 devices match this filter; 3 would be unblocked." in unblock
    await console.submit(console.url("/devices/bulk-unblock"), {"q": "fleet", "blocked": "only"})
    for device_id in ("fleet-a1", "fleet-a2", "fleet-a3"):
        assert await _blocked(api, device_id) == (False, None)


async def test_bulk_forms_need_the_csrf_token(console: Console, api: Api) -> None:
    await api.create_device("fleet-c1")
    response = await console.post(
        console.url("/devices/bulk-block"), {"q": "fleet", "blocked": "all"}, csrf="forged"
    )
    assert response.status == 403
    assert await _blocked(api, "fleet-c1") == (False, None)
