"""The audit log: who changed which device or token, when, and why; and its read route."""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
from aiohttp import web

from admin_api.auth import DEVICE_READ, Principal, authorize
from admin_api.context import PG_POOL
from admin_api.metrics import METRICS
from admin_api.paging import next_link
from admin_api.serialize import audit_json, decode_cursor, encode_cursor, from_micros, micros
from admin_api.validation import (
    check_query,
    cursor_param,
    parse_limit,
    text_param,
    time_param,
)

__all__ = ["list_audit", "record"]

_log = logging.getLogger(__name__)


async def record(
    request: web.Request,
    principal: Principal,
    action: str,
    target_type: str,
    target_id: str,
    *,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one audit entry after a change committed.

    The change is already durable, so a failure here is logged and counted, never turned into
    an error response that would make the caller retry a change that happened."""
    try:
        await request.app[PG_POOL].execute(
            """
            INSERT INTO audit_log (tenant_id, actor, action, target_type, target_id, reason,
                                   details)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
            """,
            principal.tenant_id,
            principal.subject,
            action,
            target_type,
            target_id,
            reason,
            json.dumps(details or {}),
        )
    except (asyncpg.PostgresError, OSError) as exc:
        request.app[METRICS].audit_errors.inc()
        _log.error("audit record %s %s/%s not written: %s", action, target_type, target_id, exc)


# Query parameter -> column, each an exact match.
_EXACT_FILTERS = (("targetId", "target_id"), ("actor", "actor"), ("action", "action"))


async def list_audit(request: web.Request) -> web.Response:
    """Newest first, keyset-paginated by (at, id); filtered by target, actor, action and a time
    range (``since`` inclusive, ``until`` exclusive)."""
    principal = await authorize(request, DEVICE_READ)
    check_query(request, ("limit", "cursor", *(p for p, _ in _EXACT_FILTERS), "since", "until"))
    limit = parse_limit(request)
    args: list[Any] = [principal.tenant_id, limit + 1]
    where = "tenant_id = $1"
    for param, column in _EXACT_FILTERS:
        value = text_param(request, param)
        if value is not None:
            args.append(value)
            where += f" AND {column} = ${len(args)}"
    for param, operator in (("since", ">="), ("until", "<")):
        moment = time_param(request, param)
        if moment is not None:
            args.append(moment)
            where += f" AND at {operator} ${len(args)}"
    cursor = cursor_param(request)
    if cursor is not None:
        at_micros, entry_id = decode_cursor(cursor, int, int)
        args += [from_micros(at_micros), entry_id]
        where += f" AND (at, id) < (${len(args) - 1}, ${len(args)})"
    rows = await request.app[PG_POOL].fetch(
        f"SELECT * FROM audit_log WHERE {where} ORDER BY at DESC, id DESC LIMIT $2", *args
    )
    headers: dict[str, str] = {}
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        headers["Link"] = next_link(request, encode_cursor(micros(last["at"]), last["id"]))
    return web.json_response([audit_json(r) for r in rows], headers=headers)
