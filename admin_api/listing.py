"""The device list: the filters of :mod:`admin_api.filters`, keyset pagination, JSON or CSV.

Order (deterministic, documented in docs/decisions.md): ``lastActivityAt`` descending, devices
never active (NULL) last, ties broken by ``deviceId`` descending. The cursor is the last row's
``(lastActivityAt, deviceId)``. Each page is one index range scan of ``device_activity`` on
``(tenant_id, COALESCE(last_activity_at, '-infinity') DESC, device_id DESC)`` (or its partial
twin for ``blocked=only``) joined row by row with ``devices``, or a trigram bitmap scan of
``devices`` for a selective ``q``.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any, Final

import asyncpg
from aiohttp import web

from admin_api.auth import DEVICE_READ, authorize
from admin_api.filters import FILTER_QUERY_NAMES, DeviceFilter, from_query, where_clause
from admin_api.paging import next_link
from admin_api.readreplica import READ_POOL, replica_errors
from admin_api.serialize import (
    DEVICE_FIELDS,
    decode_cursor,
    device_json,
    encode_cursor,
    from_micros,
    micros,
)
from admin_api.validation import MAX_LIMIT, check_query, cursor_param, parse_limit

__all__ = [
    "ORDER",
    "SELECT_DEVICES",
    "SORT_KEY",
    "DeviceQuery",
    "fetch_page",
    "list_devices",
    "page_cursor",
    "where_clause",
]

_CSV_BATCH: Final = MAX_LIMIT
# Exactly the order of the device_activity_by_activity index (0004), so pages are index range
# scans. Never-active devices (NULL) sort as -infinity: last, and still reachable by a row
# comparison.
SORT_KEY: Final = "COALESCE(a.last_activity_at, '-infinity'::timestamptz)"
ORDER: Final = f"{SORT_KEY} DESC, a.device_id DESC"
# The list reads devices from their activity rows (where its order lives), each joined with its
# ``devices`` row: the columns of ``devices_with_activity``.
SELECT_DEVICES: Final = (
    "SELECT d.*, a.application, a.application_version, a.os, a.os_version, a.manufacturer,"
    " a.model, a.attributes_seen_at, a.first_seen_at, a.last_active_at, a.last_data_upload_at,"
    " a.last_activity_at, a.conflict_at"
    " FROM device_activity a"
    " JOIN devices d ON d.tenant_id = a.tenant_id AND d.device_id = a.device_id"
)
# Cells a spreadsheet would run as a formula get a leading apostrophe (CSV injection).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


# The list's query and its SQL live in admin_api.filters, shared with the bulk operations.
DeviceQuery = DeviceFilter


async def fetch_page(
    pool: asyncpg.Pool, query: DeviceQuery, after: tuple[datetime | None, str] | None, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` devices after the position ``after`` (exclusive), in list order.

    One statement: the sort key maps "never active" to -infinity, so the keyset condition is a
    plain row comparison the index answers as a range. It runs with a custom plan forced: a
    prepared statement's generic plan cannot see the ``q`` pattern and would pick a full scan
    where the trigram index finds a rare term in milliseconds."""
    args: list[Any] = [query.tenant_id]
    where = where_clause(query, args)
    if after is not None:
        args += [after[0], after[1]]
        where += (
            f" AND ({SORT_KEY}, a.device_id)"
            f" < (COALESCE(${len(args) - 1}::timestamptz, '-infinity'), ${len(args)})"
        )
    args.append(limit)
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        rows: list[asyncpg.Record] = await conn.fetch(
            f"{SELECT_DEVICES} WHERE {where} ORDER BY {ORDER} LIMIT ${len(args)}", *args
        )
    return rows


def page_cursor(row: asyncpg.Record) -> str:
    """The cursor that continues after ``row``."""
    at: datetime | None = row["last_activity_at"]
    return encode_cursor(None if at is None else micros(at), row["device_id"])


def _after(request: web.Request) -> tuple[datetime | None, str] | None:
    raw = cursor_param(request)
    if raw is None:
        return None
    at_micros, device_id = decode_cursor(raw, (int, type(None)), str)
    return (None if at_micros is None else from_micros(at_micros)), device_id


def _wants_csv(request: web.Request) -> bool:
    """CSV when the client ranks text/csv above application/json (JSON by default)."""
    best: tuple[float, str] = (0.0, "application/json")
    for item in request.headers.get("Accept", "").split(","):
        media, *params = (p.strip() for p in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media.lower() == "text/csv" and quality > best[0]:
            best = (quality, "text/csv")
        elif media.lower() in ("application/json", "application/*", "*/*") and quality > best[0]:
            best = (quality, "application/json")
    return best[1] == "text/csv"


async def list_devices(request: web.Request) -> web.StreamResponse:
    principal = await authorize(request, DEVICE_READ)
    check_query(request, (*FILTER_QUERY_NAMES, "limit", "cursor"))
    query = from_query(request, principal.tenant_id)
    after = _after(request)
    limit = parse_limit(request)
    read = request.app[READ_POOL]
    pool = read.pool
    if _wants_csv(request) and "limit" not in request.query:
        with replica_errors(read):  # until the first page is read: a 503 can still be sent
            rows = await fetch_page(pool, query, after, _CSV_BATCH)
        return await _stream_csv(request, pool, query, rows)
    with replica_errors(read):
        rows = await fetch_page(pool, query, after, limit + 1)
    headers: dict[str, str] = {}
    if len(rows) > limit:
        rows = rows[:limit]
        headers["Link"] = next_link(request, page_cursor(rows[-1]))
    if _wants_csv(request):
        return web.Response(
            body=_csv_chunk(rows, header=True),
            headers=headers,
            content_type="text/csv",
            charset="utf-8",
        )
    return web.json_response([device_json(r) for r in rows], headers=headers)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, bool):  # as in the JSON, not Python's True/False
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_chunk(rows: list[asyncpg.Record], *, header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(DEVICE_FIELDS)
    for row in rows:
        device = device_json(row)
        writer.writerow([_csv_cell(device[f]) for f in DEVICE_FIELDS])
    return out.getvalue().encode("utf-8")


async def _stream_csv(
    request: web.Request,
    pool: asyncpg.Pool,
    query: DeviceQuery,
    rows: list[asyncpg.Record],
) -> web.StreamResponse:
    """Every matching device from the first page ``rows`` on, one keyset page at a time (no long
    transaction, no whole-list buffering)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="devices.csv"',
        }
    )
    await response.prepare(request)
    await response.write(_csv_chunk(rows, header=True))
    while len(rows) == _CSV_BATCH:
        last = rows[-1]
        position = (last["last_activity_at"], last["device_id"])
        rows = await fetch_page(pool, query, position, _CSV_BATCH)
        await response.write(_csv_chunk(rows, header=False))
    await response.write_eof()
    return response
