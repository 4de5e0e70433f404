"""Shadow blocks (issue 13): ``POST …/block {"mode": "shadow"}`` forwards the device's requests
and counts them as ``outcome="shadow_blocked"``; blocking again with ``enforce`` makes it a 403;
an unblock clears either. The admin API, a proxy and a recording upstream, in this process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from admincli_rig import cli
from conftest import EdgeFactory
from edgerig import eventually, metric_value
from recording_upstream import RecordingUpstream
from test_admin_helpers import Api

from gatekeeper import logs
from gatekeeper.domain import edgeview
from gatekeeper.edge.blocklist import BLOCKED, SHADOW
from gatekeeper.edge.server import EdgeServer
from gatekeeper.store import edge_writes as store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as recording:
        yield recording


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _get(session: aiohttp.ClientSession, edge: EdgeServer, tenant: str, device: str) -> int:
    url = f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/things/{device}"
    async with session.get(url, headers={"X-Device-Id": device}) as got:
        await got.read()
        return got.status


def _reached(upstream: RecordingUpstream, device: str) -> int:
    return sum(1 for seen in upstream.seen if seen.target.endswith(f"/things/{device}"))


async def _outcome(session: aiohttp.ClientSession, edge: EdgeServer, outcome: str) -> float:
    labels = {"outcome": outcome}
    value = await metric_value(session, edge.metrics_port, "gatekeeper_requests_total", labels)
    return value or 0.0


async def _block(api: Api, device: str, **body: str) -> dict[str, object]:
    response = await api.call("POST", api.device_path(device, "/block"), json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, object] = await response.json()
    return answer


async def test_a_shadow_block_forwards_counts_and_logs_then_enforce_denies(
    api: Api,
    edge_factory: EdgeFactory,
    upstream: RecordingUpstream,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(logs, "_current", ("json", "worker"))
    # Sampled access log: a forwarded success is logged once in a thousand, a shadow one always.
    edge = await edge_factory(upstream=upstream.url, access_log="sampled", access_log_sample=1000)
    tenant = api.tenant
    await api.create_device("shadowed")
    device = await _block(api, "shadowed", mode="shadow", reason="watching")
    assert device["isBlocked"] is True and device["blockMode"] == "shadow"
    assert await eventually(lambda: _mirrored(edge, tenant, "shadowed", SHADOW))
    assert await _get(session, edge, tenant, "warm-up") == 200  # the first success is logged
    assert edge.access_log is not None
    edge.access_log.flush()
    capfd.readouterr()

    before = await _outcome(session, edge, "forwarded")
    for _ in range(3):
        assert await _get(session, edge, tenant, "shadowed") == 200
    assert _reached(upstream, "shadowed") == 3
    assert await _outcome(session, edge, "shadow_blocked") == 3
    assert await _outcome(session, edge, "forwarded") == before  # one outcome per request
    edge.access_log.flush()
    lines = [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.strip()]
    assert [(x["status"], x["outcome"]) for x in lines] == [(200, "shadow_blocked")] * 3

    # Shadow -> enforce: one call, and the device is denied.
    device = await _block(api, "shadowed", mode="enforce")
    assert device["blockMode"] == "enforce" and device["blockReason"] == "watching"
    assert await eventually(lambda: _mirrored(edge, tenant, "shadowed", BLOCKED))
    assert await _get(session, edge, tenant, "shadowed") == 403
    assert _reached(upstream, "shadowed") == 3

    # Unblock: forwarded and counted as forwarded, not shadow_blocked.
    response = await api.call("POST", api.device_path("shadowed", "/unblock"))
    assert (await response.json())["blockMode"] is None
    assert await eventually(lambda: _mirrored(edge, tenant, "shadowed", None))
    assert await _get(session, edge, tenant, "shadowed") == 200
    assert _reached(upstream, "shadowed") == 4
    assert await _outcome(session, edge, "shadow_blocked") == 3


async def _mirrored(edge: EdgeServer, tenant: str, device: str, marker: str | None) -> bool:
    return edge.mirror.denial((tenant, device)) == marker


async def test_block_mode_shows_in_the_device_the_list_and_the_audit(api: Api) -> None:
    for name in ("bm-shadow", "bm-enforce", "bm-free"):
        await api.create_device(name)
    await _block(api, "bm-shadow", mode="shadow")
    await _block(api, "bm-enforce")  # the default mode
    got = await (await api.call("GET", api.device_path("bm-shadow"))).json()
    assert got["blockMode"] == "shadow" and got["isBlocked"] is True
    listed = await (await api.call("GET", api.path("/devices") + "?q=bm-")).json()
    assert {d["deviceId"]: d["blockMode"] for d in listed} == {
        "bm-shadow": "shadow",
        "bm-enforce": "enforce",
        "bm-free": None,
    }
    blocked = await (await api.call("GET", api.path("/devices") + "?q=bm-&blocked=only")).json()
    assert {d["deviceId"] for d in blocked} == {"bm-shadow", "bm-enforce"}
    entries = await (await api.call("GET", api.path("/audit") + "?action=device.block")).json()
    modes = {e["targetId"]: e["details"]["mode"] for e in entries}
    assert modes == {"bm-shadow": "shadow", "bm-enforce": "enforce"}


@pytest.mark.parametrize(
    "body", [{"mode": "audit"}, {"mode": None}, {"mode": "SHADOW"}, {"mode": 1}]
)
async def test_a_mode_other_than_enforce_or_shadow_is_422(api: Api, body: object) -> None:
    await api.create_device("bm-bad")
    response = await api.call("POST", api.device_path("bm-bad", "/block"), json=body)
    assert response.status == 422
    assert "mode" in await response.text()
    got = await (await api.call("GET", api.device_path("bm-bad"))).json()
    assert got["isBlocked"] is False and got["blockMode"] is None


async def test_the_edge_view_holds_each_device_in_one_set(
    pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    member = edgeview.member(tenant, "sets-1")
    await store.set_blocked(pg_pool, redis_client, tenant, "sets-1", True, create=True)
    await store.set_blocked(pg_pool, redis_client, tenant, "sets-1", True, mode="shadow")
    assert await redis_client.sismember(edgeview.SHADOW_SET, member)
    assert not await redis_client.sismember(edgeview.BLOCKED_SET, member)
    await redis_client.delete(edgeview.SHADOW_SET)  # lost: reconcile brings it back
    counts = await store.reconcile(pg_pool, redis_client)
    assert counts["shadow"] >= 1
    assert await redis_client.sismember(edgeview.SHADOW_SET, member)
    await store.set_blocked(pg_pool, redis_client, tenant, "sets-1", False)
    assert not await redis_client.sismember(edgeview.SHADOW_SET, member)
    row = await pg_pool.fetchrow(
        "SELECT is_blocked, block_mode FROM devices WHERE tenant_id = $1 AND device_id = $2",
        tenant,
        "sets-1",
    )
    assert row is not None and (row["is_blocked"], row["block_mode"]) == (False, None)


def test_a_proxy_older_than_shadow_blocks_ignores_the_shadow_event() -> None:
    """What a previous version decodes of a shadow block's announcement: ``unblock`` (it lifts
    an enforced block it held), then nothing (the kind is unknown to it, decode gives None)."""
    old_kinds = {"block", "unblock", "disable", "enable", "revoke", "resync"}
    events = store._block_events("t dev", True, "shadow")
    assert [edgeview.encode(e) for e in events] == ["unblock t dev", "shadow t dev"]
    assert [e.kind in old_kinds for e in events] == [True, False]


async def test_a_shadow_block_leaves_the_devices_websocket_open(
    edge_factory: EdgeFactory,
    upstream: RecordingUpstream,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    edge = await edge_factory(upstream=upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.proxy_port)
    try:
        writer.write(
            f"GET /api/{tenant}/ws HTTP/1.1\r\nHost: edge\r\nX-Device-Id: ws-shadow\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        await store.set_blocked(
            pg_pool, redis_client, tenant, "ws-shadow", True, create=True, mode="shadow"
        )
        assert await eventually(lambda: _mirrored(edge, tenant, "ws-shadow", SHADOW))
        await asyncio.sleep(0.2)
        assert not reader.at_eof()
        # Switched to enforce, the same tunnel is ended.
        await store.set_blocked(pg_pool, redis_client, tenant, "ws-shadow", True)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_the_cli_blocks_in_shadow_mode(api: Api) -> None:
    await api.create_device("cli-shadow")
    ran = await cli(api, "devices", "block", "cli-shadow", "--mode", "shadow")
    assert ran.code == 0 and ran.out == "shadow-blocked cli-shadow\n"
    got = await (await api.call("GET", api.device_path("cli-shadow"))).json()
    assert got["blockMode"] == "shadow"
    ran = await cli(api, "devices", "block", "cli-shadow")
    assert ran.code == 0 and ran.out == "blocked cli-shadow\n"
    got = await (await api.call("GET", api.device_path("cli-shadow"))).json()
    assert got["blockMode"] == "enforce"


async def test_a_proxy_started_after_a_shadow_block_loads_it(
    edge_factory: EdgeFactory,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
) -> None:
    blocks: list[tuple[str, store.BlockMode]] = [
        ("load-shadow", "shadow"),
        ("load-enforce", "enforce"),
    ]
    for device, mode in blocks:
        await store.set_blocked(pg_pool, redis_client, tenant, device, True, create=True, mode=mode)
    edge = await edge_factory()
    assert edge.mirror.denial((tenant, "load-shadow")) == SHADOW
    assert edge.mirror.denial((tenant, "load-enforce")) == BLOCKED
    assert not edge.mirror.refuses((tenant, "load-shadow"))
    assert edge.mirror.refuses((tenant, "load-enforce"))
