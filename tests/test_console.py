"""The web console against a real admin app, Postgres and Valkey: sessions, CSRF, headers,
tenant isolation, and that each console action has the API's effect (and audit)."""

from __future__ import annotations

import asyncio
import hashlib
import re

import asyncpg
import pytest
import redis.asyncio as aioredis
from console_rig import Console
from test_admin_helpers import Api

from admin_api.auth import DEVICE_READ, DEVICE_WRITE
from admin_api.console.session import COOKIE
from gatekeeper.domain import edgeview
from gatekeeper.runtime.admin_tokens import mint_token


async def test_sign_in_page_has_the_named_controls(api: Api) -> None:
    html = await Console(api).text("/console/")
    assert '<label for="token">Access token</label>' in html
    assert '<button type="submit">Sign in</button>' in html


async def test_sign_in_sets_a_strict_session_cookie(api: Api, redis_client: aioredis.Redis) -> None:
    response = await Console(api).sign_in()
    assert response.status == 303
    assert response.headers["Location"] == f"/console/{api.tenant}/devices"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure is set when served over TLS
    # The session lives in Redis as long as the token (one hour), under a digest of the id.
    session_id = response.cookies[COOKIE].value
    key = "gatekeeper:console:session:" + hashlib.sha256(session_id.encode()).hexdigest()
    assert 3500 < await redis_client.ttl(key) <= 3600
    assert not [k async for k in redis_client.scan_iter(f"*{session_id}*")]


@pytest.mark.parametrize(
    ("token", "says"),
    [("not-a-token", "malformed"), ("", "Enter an access token")],
)
async def test_sign_in_refuses_a_bad_token(api: Api, token: str, says: str) -> None:
    response = await api.client.post("/console/sign-in", data={"token": token})
    assert response.status in (400, 401)
    html = await response.text()
    assert "The access token was not accepted" in html or says in html
    assert says in html
    assert "Set-Cookie" not in response.headers or "Max-Age=0" in response.headers["Set-Cookie"]


async def test_login_from_another_site_is_refused(api: Api) -> None:
    response = await api.client.post(
        "/console/sign-in",
        data={"token": api.token()},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        allow_redirects=False,
    )
    assert response.status == 403 and COOKIE not in response.cookies


async def test_console_responses_carry_a_strict_csp(console: Console) -> None:
    for path in ("/console/", console.url("/devices"), "/console/static/console.css"):
        response = await console.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
    assert (await console.get(console.url("/devices"))).headers["Cache-Control"] == "no-store"
    # Scoped to the console: the API and the /docs explorer keep their own headers.
    docs = await console.get("/docs")
    assert docs.status == 200
    console_csp = (await console.get("/console/")).headers["Content-Security-Policy"]
    assert docs.headers["Content-Security-Policy"] != console_csp


async def test_pages_without_a_session_go_to_sign_in(api: Api) -> None:
    response = await Console(api).get(f"/console/{api.tenant}/devices")
    assert response.status == 303 and response.headers["Location"] == "/console/"


async def test_another_tenants_url_is_not_allowed(console: Console, api: Api) -> None:
    await api.create_device("mine-1", name="Mine")
    other = "other-" + api.tenant[:20]
    for path in (console.url("/devices", other), console.url("/devices/mine-1", other)):
        html = await console.text(path, status=403)
        assert "Not allowed" in html and "Mine" not in html
    refused = await console.post(console.url("/devices/mine-1/block", other), {"reason": "x"})
    assert refused.status == 403
    device = await api.call("GET", api.device_path("mine-1"))
    assert not (await device.json())["isBlocked"]


async def test_forms_without_the_csrf_token_are_refused(console: Console, api: Api) -> None:
    await api.create_device("csrf-1")
    for csrf in ("", "forged"):
        response = await console.post(console.device_url("csrf-1", "/block"), csrf=csrf)
        assert response.status == 403
        assert "not sent from this console" in await response.text()
    cross = await console.post(
        console.device_url("csrf-1", "/block"), headers={"Origin": "https://evil.example"}
    )
    assert cross.status == 403
    device = await api.call("GET", api.device_path("csrf-1"))
    assert not (await device.json())["isBlocked"]


async def test_sign_out_ends_the_session_everywhere(console: Console, api: Api) -> None:
    stolen = console.api.client.session.cookie_jar.filter_cookies(
        console.api.client.make_url("/console/")
    )[COOKIE].value
    response = await console.post("/console/sign-out")
    assert response.status == 303 and response.headers["Location"] == "/console/"
    replay = await api.client.get(
        console.url("/devices"), headers={"Cookie": f"{COOKIE}={stolen}"}, allow_redirects=False
    )
    assert replay.status == 303 and replay.headers["Location"] == "/console/"


async def _activity(pg_pool: asyncpg.Pool, tenant: str, device_id: str, minutes_ago: int) -> None:
    """Make ``device_id`` look active ``minutes_ago`` (what the recorder would write)."""
    await pg_pool.execute(
        "INSERT INTO device_activity (tenant_id, device_id, last_active_at, application,"
        " manufacturer, model) VALUES ($1, $2, now() - make_interval(mins => $3), 'CrewApp',"
        " 'Acme', 'X1') ON CONFLICT (tenant_id, device_id) DO UPDATE SET"
        " last_active_at = EXCLUDED.last_active_at",
        tenant,
        device_id,
        minutes_ago,
    )


async def test_devices_list_search_filter_and_order(
    console: Console, api: Api, pg_pool: asyncpg.Pool
) -> None:
    for device_id, name, minutes in (("d-old", "Old gate", 30), ("d-new", None, 1)):
        await api.create_device(device_id, **({"name": name} if name else {}))
        await _activity(pg_pool, api.tenant, device_id, minutes)
    await api.create_device("d-blocked", name="Blocked gate")
    await api.call("POST", api.device_path("d-blocked", "/block"), json={"reason": "lost"})
    html = await console.text(console.url("/devices"))
    for header in ("Name", "Application", "Manufacturer", "Model", "Last activity"):
        assert '<th scope="col"' in html and f">{header}</th>" in html
    # Most recent activity first: the block just now, then d-new (identifier shown), then Old.
    assert html.index("Blocked gate") < html.index(">d-new<") < html.index("Old gate")
    assert '<tr class="blocked">' in html and '<span class="badge">Blocked</span>' in html
    assert f'href="/console/{api.tenant}/devices/d-new"' in html
    only = await console.text(console.url("/devices?blocked=only"))
    assert "Blocked gate" in only and "Old gate" not in only
    hidden = await console.text(console.url("/devices?blocked=hide"))
    assert "Blocked gate" not in hidden and "Old gate" in hidden
    search = await console.text(console.url("/devices?q=OLD"))
    assert "Old gate" in search and "d-new" not in search
    assert '<option value="only">Only blocked</option>' in search


async def test_devices_list_pages_on_demand(
    console: Console, api: Api, pg_pool: asyncpg.Pool
) -> None:
    await pg_pool.execute(
        "INSERT INTO devices (tenant_id, device_id) SELECT $1, 'bulk-' || lpad(i::text, 3, '0')"
        " FROM generate_series(1, 55) i",
        api.tenant,
    )
    first = await console.text(console.url("/devices"))
    assert first.count("/devices/bulk-") == 50 and "bulk-055" in first and "bulk-005" not in first
    more = re.search(r'<a href="(\?[^"]+)" rel="next">More</a>', first)
    assert more is not None
    second = await console.text(console.url("/devices") + more.group(1).replace("&amp;", "&"))
    assert second.count("/devices/bulk-") == 5 and "bulk-001" in second
    assert 'rel="next"' not in second
    # The page weight budget, 200 KB before compression, with everything it loads.
    assets = [await console.text(f"/console/static/console.{ext}") for ext in ("css", "js")]
    assert len(first.encode()) + sum(len(a.encode()) for a in assets) < 200 * 1024


async def test_csv_export_of_the_current_filter(console: Console, api: Api) -> None:
    await api.create_device("csv-a", name="Alpha")
    await api.create_device("csv-b", name="Beta")
    html = await console.text(console.url("/devices?q=alp"))
    assert f'href="/console/{api.tenant}/devices.csv?blocked=all&amp;q=alp"' in html
    response = await console.get(console.url("/devices.csv?blocked=all&q=alp"))
    assert response.status == 200 and response.content_type == "text/csv"
    lines = (await response.text()).splitlines()
    assert lines[0].startswith("deviceId,") and len(lines) == 2 and lines[1].startswith("csv-a,")


async def test_block_with_reason_reaches_the_api_and_the_edge_view(
    console: Console, api: Api, redis_client: aioredis.Redis
) -> None:
    await api.create_device("blk-1", name="Front door")
    page = await console.text(console.device_url("blk-1"))
    assert "<h1>Front door</h1>" in page and 'name="confirm" value="block">Block</button>' in page
    confirm = await console.text(console.device_url("blk-1") + "?confirm=block")
    assert '<label for="reason">Reason</label>' in confirm and "Block device</button>" in confirm
    after = await console.submit(console.device_url("blk-1", "/block"), {"reason": "stolen"})
    assert "Blocked: stolen" in after and ">Unblock</button>" in after
    device = await (await api.call("GET", api.device_path("blk-1"))).json()
    assert device["isBlocked"] and device["blockReason"] == "stolen"
    member = edgeview.member(api.tenant, "blk-1")
    assert await redis_client.sismember(edgeview.BLOCKED_SET, member)
    await console.submit(console.device_url("blk-1", "/unblock"))
    assert not await redis_client.sismember(edgeview.BLOCKED_SET, member)
    audit = await (await api.call("GET", api.path("/audit?targetId=blk-1"))).json()
    assert [(e["action"], e["reason"], e["actor"]) for e in audit][:2] == [
        ("device.unblock", None, "tester"),
        ("device.block", "stolen", "tester"),
    ]


async def test_rename_and_clear_the_name(console: Console, api: Api) -> None:
    await api.create_device("ren-1")
    page = await console.submit(console.device_url("ren-1", "/rename"), {"name": " Lobby "})
    assert "<h1>Lobby</h1>" in page
    assert (await (await api.call("GET", api.device_path("ren-1"))).json())["name"] == "Lobby"
    cleared = await console.submit(console.device_url("ren-1", "/rename"), {"name": ""})
    assert "<h1>ren-1</h1>" in cleared


async def test_api_errors_are_shown_next_to_their_form(console: Console, api: Api) -> None:
    await api.create_device("err-1")
    page = await console.submit(console.device_url("err-1", "/rename"), {"name": "x" * 201})
    assert '<p class="error" role="alert" id="error-rename">' in page and "name" in page
    assert 'aria-describedby="error-rename"' in page
    # Shown once: the next visit is clean.
    assert "error-rename" not in await console.text(console.device_url("err-1"))
    missing = await console.text(console.device_url("no-such-device"), status=404)
    assert "No such device" in missing


async def test_enable_disable_and_key_reset_shown_once(
    console: Console, api: Api, redis_client: aioredis.Redis
) -> None:
    await api.create_device("key-1")
    disabled = await console.submit(console.device_url("key-1", "/disable"))
    assert "Enable device</button>" in disabled
    member = edgeview.member(api.tenant, "key-1")
    assert await redis_client.sismember(edgeview.DISABLED_SET, member)
    await console.submit(console.device_url("key-1", "/enable"))
    assert not await redis_client.sismember(edgeview.DISABLED_SET, member)
    page = await console.submit(console.device_url("key-1", "/reset-key"))
    key = re.search(r'id="new-key" readonly value="([^"]+)"', page)
    assert key is not None
    connect = await api.call(
        "POST", api.device_path("key-1", "/connect"), auth=False, headers={"X-Api-Key": key[1]}
    )
    assert connect.status == 200
    assert key[1] not in await console.text(console.device_url("key-1"))


async def test_history_shows_before_and_after(
    console: Console, api: Api, pg_pool: asyncpg.Pool
) -> None:
    await api.create_device("his-1")
    await pg_pool.execute(
        "INSERT INTO device_history (tenant_id, device_id, recorded_at, changed_fields, previous,"
        " current) VALUES ($1, 'his-1', now(), ARRAY['application_version'],"
        ' \'{"application_version": "1.0"}\', \'{"application_version": "1.1"}\')',
        api.tenant,
    )
    page = await console.text(console.device_url("his-1"))
    assert '<h2 id="history-h">History</h2>' in page
    assert "Application version: 1.0 → 1.1" in page


async def test_tokens_create_shown_once_and_revoke(console: Console, api: Api) -> None:
    page = await console.text(console.url("/tokens"))
    assert '<label for="token-name">Token name</label>' in page and "Create token</button>" in page
    created = await console.submit(console.url("/tokens"), {"name": "ci"})
    secret = re.search(r'id="new-token" readonly value="([^"]+)"', created)
    assert secret is not None
    tokens = await (await api.call("GET", api.path("/tokens"))).json()
    assert [t["name"] for t in tokens] == ["ci"] and tokens[0]["revokedAt"] is None
    again = await console.text(console.url("/tokens"))
    assert secret[1] not in again and 'aria-label="Revoke ci"' in again
    await console.submit(console.url(f"/tokens/{tokens[0]['tokenId']}/revoke"))
    tokens = await (await api.call("GET", api.path("/tokens"))).json()
    assert tokens[0]["revokedAt"] is not None


async def test_audit_page_with_filters(console: Console, api: Api) -> None:
    await api.create_device("aud-1")
    await console.submit(console.device_url("aud-1", "/block"), {"reason": "fraud"})
    await console.submit(console.device_url("aud-1", "/rename"), {"name": "Audited"})
    page = await console.text(console.url("/audit"))
    assert "device.block" in page and "fraud" in page and "device.update" in page
    filtered = await console.text(console.url("/audit?action=device.block"))
    assert "device.block" in filtered and "device.update" not in filtered
    bad = await console.text(console.url("/audit?since=yesterday"))
    assert '<p class="error" role="alert">' in bad and "since" in bad


async def test_a_token_without_a_scope_reads_a_clear_message(api: Api) -> None:
    console = Console(api)
    assert (await console.sign_in(scopes=[DEVICE_READ])).status == 303
    html = await console.text(console.url("/tokens"), status=403)
    assert "lacks the scope Token.Read" in html
    await api.create_device("ro-1")
    page = await console.submit(console.device_url("ro-1", "/block"), {"reason": "x"})
    assert "lacks the scope " + DEVICE_WRITE in page


async def test_the_session_ends_with_its_token(api: Api) -> None:
    console = Console(api)
    token = mint_token(api.settings, api.tenant, [DEVICE_READ], subject="brief", ttl_seconds=2)
    assert (await console.sign_in(token)).status == 303
    assert (await console.get(console.url("/devices"))).status == 200
    await asyncio.sleep(2.1)  # the API would still accept it (30 s leeway); the session ends
    response = await console.get(console.url("/devices"))
    assert response.status == 303 and response.headers["Location"] == "/console/"


async def test_no_single_sign_on_without_a_provider(api: Api) -> None:
    assert "single sign-on" not in await Console(api).text("/console/")
    assert (await api.client.get("/console/oidc/start")).status == 404
