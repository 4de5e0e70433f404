"""The device list: order, search, blocked filter, keyset pagination, CSV, tenant isolation."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from test_admin_helpers import Api, fields_of, problem

T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def _seed(
    pool: asyncpg.Pool, tenant: str, rows: list[tuple[str, str | None, datetime | None]]
) -> None:
    # A device row and its activity row (migration 0004: the trigger adds the activity row).
    await pool.executemany(
        "INSERT INTO devices (tenant_id, device_id, name) VALUES ($1,$2,$3)",
        [(tenant, d, n) for d, n, _ in rows],
    )
    await pool.executemany(
        "UPDATE device_activity SET last_active_at = $3 WHERE tenant_id = $1 AND device_id = $2",
        [(tenant, d, at) for d, _, at in rows],
    )


def _next(response: Any) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    assert link.endswith('; rel="next"')
    return str(link[link.index("<") + 1 : link.index(">")])


async def _walk(api: Api, path: str) -> list[str]:
    seen: list[str] = []
    url: str | None = path
    while url is not None:
        response = await api.call("GET", url)
        assert response.status == 200
        seen += [d["deviceId"] for d in await response.json()]
        url = _next(response)
    return seen


async def test_order_ties_nulls_and_pagination(api: Api, pg_pool: asyncpg.Pool) -> None:
    rows: list[tuple[str, str | None, datetime | None]] = [
        ("a", None, T0),
        ("b", None, T0),
        ("c", None, T0 + timedelta(seconds=5)),
        ("d", None, None),
        ("e", None, None),
        ("f", None, T0 - timedelta(days=1)),
    ]
    await _seed(pg_pool, api.tenant, rows)
    expected = ["c", "b", "a", "f", "e", "d"]
    response = await api.call("GET", api.path("/devices"))
    assert [d["deviceId"] for d in await response.json()] == expected
    assert "Link" not in response.headers
    for limit in (1, 2, 4, 5):
        assert await _walk(api, api.path("/devices") + f"?limit={limit}") == expected


async def test_blocked_device_sorts_by_block_time(api: Api, pg_pool: asyncpg.Pool) -> None:
    await _seed(pg_pool, api.tenant, [("old", None, T0 - timedelta(days=30)), ("new", None, T0)])
    await api.call("POST", api.device_path("old", "/block"))
    listed = await (await api.call("GET", api.path("/devices"))).json()
    assert [d["deviceId"] for d in listed] == ["old", "new"]  # blockedAt is now
    only = await (await api.call("GET", api.path("/devices") + "?blocked=only")).json()
    hide = await (await api.call("GET", api.path("/devices") + "?blocked=hide")).json()
    everything = await (await api.call("GET", api.path("/devices") + "?blocked=all")).json()
    assert [d["deviceId"] for d in only] == ["old"]
    assert [d["deviceId"] for d in hide] == ["new"]
    assert len(everything) == 2


async def test_search_name_or_id_case_insensitive(api: Api, pg_pool: asyncpg.Pool) -> None:
    await _seed(
        pg_pool,
        api.tenant,
        [
            ("Gate-North", None, T0),
            ("x1", "Kitchen TABLET", T0),
            ("x2", "garden", T0),
            ("100%_sure", None, T0),
            ("y", "under_score", T0),
            ("z", "underXscore", T0),
        ],
    )

    async def ids(q: str) -> set[str]:
        response = await api.client.get(
            api.path("/devices"),
            params={"q": q},
            headers={"Authorization": f"Bearer {api.token()}"},
        )
        return {d["deviceId"] for d in await response.json()}

    assert await ids("gate") == {"Gate-North"}
    assert await ids("TABLET") == {"x1"}
    assert await ids("ar") == {"x2"}
    assert await ids("%") == {"100%_sure"}
    assert await ids("_") == {"100%_sure", "y"}
    assert await ids("nothing") == set()


async def test_list_parameter_errors(api: Api) -> None:
    cases = {
        "?limit=0": "query.limit",
        "?limit=1001": "query.limit",
        "?limit=x": "query.limit",
        "?blocked=maybe": "query.blocked",
        "?cursor=!!": "query.cursor",
        "?cursor=WzFd": "query.cursor",
        "?sort=name": "query.sort",
        "?q=" + "x" * 201: "query.q",
        "?q=a%00": "query.q",
        "?limit=1&limit=2": "query.limit",
    }
    for query, field in cases.items():
        body = await problem(await api.call("GET", api.path("/devices") + query), 400)
        assert field in fields_of(body), query


async def test_csv_export_streams_everything(api: Api, pg_pool: asyncpg.Pool) -> None:
    await _seed(
        pg_pool,
        api.tenant,
        [
            (f"d{i:04}", "=cmd()" if i == 3 else None, T0 + timedelta(seconds=i))
            for i in range(1203)
        ],
    )
    response = await api.call("GET", api.path("/devices"), headers={"Accept": "text/csv"})
    assert response.status == 200 and response.content_type == "text/csv"
    table = list(csv.DictReader(io.StringIO(await response.text())))
    assert len(table) == 1203 and table[0]["deviceId"] == "d1202"
    assert next(r for r in table if r["deviceId"] == "d0003")["name"] == "'=cmd()"
    page = await api.call(
        "GET",
        api.path("/devices") + "?limit=10",
        headers={"Accept": "text/csv;q=0.9, application/json;q=0.5"},
    )
    assert page.content_type == "text/csv" and _next(page) is not None
    assert len(list(csv.DictReader(io.StringIO(await page.text())))) == 10
    prefer_json = await api.call(
        "GET",
        api.path("/devices") + "?limit=1",
        headers={"Accept": "application/json, text/csv;q=0.5"},
    )
    assert prefer_json.content_type == "application/json"


async def test_csv_booleans_are_true_and_false(api: Api) -> None:
    await api.create_device("on")
    await api.create_device("off")
    disabled = await api.call("PUT", api.device_path("off"), json={"isEnabled": False})
    blocked = await api.call("POST", api.device_path("off", "/block"), json={})
    assert (disabled.status, blocked.status) == (200, 200)
    response = await api.call("GET", api.path("/devices"), headers={"Accept": "text/csv"})
    rows = {r["deviceId"]: r for r in csv.DictReader(io.StringIO(await response.text()))}
    assert (rows["on"]["isEnabled"], rows["on"]["isBlocked"]) == ("true", "false")
    assert (rows["off"]["isEnabled"], rows["off"]["isBlocked"]) == ("false", "true")


async def test_list_never_shows_other_tenants(api: Api, pg_pool: asyncpg.Pool) -> None:
    other = api.tenant + "x"
    await _seed(pg_pool, api.tenant, [("mine", None, T0)])
    await _seed(pg_pool, other, [("mine", "theirs", T0), ("theirs", None, T0)])
    listed = await (await api.call("GET", api.path("/devices"))).json()
    assert [(d["deviceId"], d["name"]) for d in listed] == [("mine", None)]
    csv_text = await (
        await api.call("GET", api.path("/devices"), headers={"Accept": "text/csv"})
    ).text()
    assert "theirs" not in csv_text
    await problem(await api.call("GET", api.path("/devices", tenant=other)), 403)
