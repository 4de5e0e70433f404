"""Webhook routes (issue 14): create (the signing secret is shown once), list, read, change,
delete, the deliveries of one, and a test event. The dispatcher delivers; these only manage.

SQL is in :mod:`gatekeeper.store.webhooks`, which never reads the secret back.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from admin_api import audit, schemas, webhook_schemas
from admin_api.auth import WEBHOOK_READ, WEBHOOK_WRITE, authorize
from admin_api.context import PG_POOL, SETTINGS
from admin_api.errors import FieldError, Problem, bad_request, conflict, not_found, unprocessable
from admin_api.paging import next_link
from admin_api.serialize import Row, decode_cursor, encode_cursor, from_micros, micros, rfc3339
from admin_api.validation import check_query, cursor_param, parse_limit, read_json, validator
from admin_api.webhook_security import TargetRefused, check_target, new_secret
from gatekeeper.store import webhooks as store

__all__ = [
    "create_webhook",
    "delete_webhook",
    "get_webhook",
    "list_deliveries",
    "list_webhooks",
    "reset_secret",
    "send_test_event",
    "update_webhook",
]

_CREATE = validator(webhook_schemas.CREATE_WEBHOOK)
_UPDATE = validator(webhook_schemas.UPDATE_WEBHOOK)
_RESET = validator(schemas.RESET_REQUEST)


def webhook_json(row: Row) -> dict[str, Any]:
    return {
        "webhookId": str(row["webhook_id"]),
        "url": row["url"],
        "events": list(row["events"]),
        "description": row["description"],
        "enabled": row["is_enabled"],
        "disabledAt": rfc3339(row["disabled_at"]),
        "failingSince": rfc3339(row["failing_since"]),
        "createdAt": rfc3339(row["created_at"]),
    }


def _event_type(body: str) -> str | None:
    """The ``type`` of a delivery's envelope (the dispatcher stores the body it sends)."""
    try:
        envelope = json.loads(body)
    except ValueError:
        return None
    kind = envelope.get("type") if isinstance(envelope, dict) else None
    return kind if isinstance(kind, str) else None


def _attempt_json(item: dict[str, Any]) -> dict[str, Any]:
    # Postgres writes timestamptz into JSON as ISO 8601 with an offset; answer RFC 3339 in UTC
    # like every other timestamp of the API.
    return {
        "attemptedAt": rfc3339(datetime.fromisoformat(item["attemptedAt"])),
        "status": item["status"],
        "durationMs": item["durationMs"],
        "error": item["error"],
    }


def delivery_json(row: Row) -> dict[str, Any]:
    pending = row["state"] == "pending"
    return {
        "deliveryId": row["id"],
        "eventId": str(row["event_id"]),
        "type": _event_type(row["body"]),
        "deviceId": row["device_id"],
        "state": row["state"],
        "attempts": row["attempts"],
        "nextAttemptAt": rfc3339(row["next_attempt_at"]) if pending else None,
        "createdAt": rfc3339(row["created_at"]),
        "finishedAt": rfc3339(row["finished_at"]),
        "attemptLog": [_attempt_json(a) for a in json.loads(row["attempt_log"])],
    }


def _webhook_id(request: web.Request) -> uuid.UUID:
    """The path's id; a malformed one names no webhook (404, as an unknown one)."""
    try:
        return uuid.UUID(request.match_info["webhookId"])
    except ValueError:
        raise not_found("No such webhook") from None


def _origin(url: str) -> str:
    """What the audit log keeps of a target: its path and query may hold a credential (many
    receivers put one there), so only scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


async def _check_url(request: web.Request, url: str) -> None:
    """422 unless the target may be delivered to (:func:`check_target`), within the delivery
    timeout: a slow resolver must not hold the request."""
    settings = request.app[SETTINGS]
    try:
        urlsplit(url).port  # noqa: B018  # raises for a port beyond 65535
        async with asyncio.timeout(settings.webhook_timeout_seconds):
            await check_target(url, allow_private=settings.webhook_allow_private_targets)
    except TargetRefused as exc:
        message = str(exc)
    except ValueError:  # a host the resolver cannot encode (UnicodeError), a bad port
        message = "has an invalid host or port"
    except TimeoutError:
        message = "the host did not resolve in time"
    else:
        return
    raise unprocessable([FieldError(field="url", message=message)])


async def create_webhook(request: web.Request) -> web.Response:
    principal = await authorize(request, WEBHOOK_WRITE)
    body = await read_json(request, _CREATE)
    await _check_url(request, body["url"])
    secret = new_secret()
    row = await store.create_webhook(
        request.app[PG_POOL],
        principal.tenant_id,
        url=body["url"],
        events=body["events"],
        description=body.get("description"),
        secret=secret,
    )
    if row is None:
        raise conflict(
            f"A tenant has at most {store.MAX_WEBHOOKS_PER_TENANT} webhooks; delete one first"
        )
    created = webhook_json(row)
    await audit.record(
        request,
        principal,
        "webhook.create",
        "webhook",
        created["webhookId"],
        details={"target": _origin(body["url"]), "events": created["events"]},
    )
    location = f"/api/{quote(principal.tenant_id, safe='')}/webhooks/{created['webhookId']}"
    return web.json_response(
        {**created, "secret": secret},
        status=201,
        headers={"Location": location, "Cache-Control": "no-store"},
    )


async def reset_secret(request: web.Request) -> web.Response:
    """A new signing secret, shown in this answer only. With ``graceSeconds`` the replaced one
    keeps signing beside it that long (a second ``v1``), so the receiver can switch without
    refusing a delivery; without, deliveries carry only the new one from now on."""
    principal = await authorize(request, WEBHOOK_WRITE)
    webhook_id = _webhook_id(request)
    body = await read_json(request, _RESET, optional=True)
    grace = float(body.get("graceSeconds", 0))
    secret = new_secret()
    found, previous_until = await store.reset_secret(
        request.app[PG_POOL], principal.tenant_id, webhook_id, secret, grace
    )
    if not found:
        raise not_found("No such webhook")
    await audit.record(
        request,
        principal,
        "webhook.secret_reset",
        "webhook",
        str(webhook_id),
        details={"graceSeconds": grace},
    )
    return web.json_response(
        {
            "webhookId": str(webhook_id),
            "secret": secret,
            "previousSecretExpiresAt": rfc3339(previous_until),
        },
        headers={"Cache-Control": "no-store"},
    )


def _bad_cursor() -> Problem:
    return bad_request(
        "Invalid query parameters",
        [FieldError(field="query.cursor", message="is not a valid cursor")],
    )


async def list_webhooks(request: web.Request) -> web.Response:
    """Newest first, keyset-paginated by (createdAt, webhookId); no secrets."""
    principal = await authorize(request, WEBHOOK_READ)
    check_query(request, ("limit", "cursor"))
    limit = parse_limit(request)
    after: tuple[datetime, uuid.UUID] | None = None
    cursor = cursor_param(request)
    if cursor is not None:
        at_micros, raw_id = decode_cursor(cursor, int, str)
        try:
            after = (from_micros(at_micros), uuid.UUID(raw_id))
        except ValueError:
            raise _bad_cursor() from None
    rows = await store.list_webhooks(request.app[PG_POOL], principal.tenant_id, limit + 1, after)
    headers: dict[str, str] = {}
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        position = encode_cursor(micros(last["created_at"]), str(last["webhook_id"]))
        headers["Link"] = next_link(request, position)
    return web.json_response([webhook_json(r) for r in rows], headers=headers)


async def get_webhook(request: web.Request) -> web.Response:
    principal = await authorize(request, WEBHOOK_READ)
    webhook_id = _webhook_id(request)
    check_query(request, ())
    row = await store.get_webhook(request.app[PG_POOL], principal.tenant_id, webhook_id)
    if row is None:
        raise not_found("No such webhook")
    return web.json_response(webhook_json(row))


async def update_webhook(request: web.Request) -> web.Response:
    """Change ``enabled``, ``events`` and/or ``description`` (fields not given are kept)."""
    principal = await authorize(request, WEBHOOK_WRITE)
    webhook_id = _webhook_id(request)
    body = await read_json(request, _UPDATE)
    row = await store.update_webhook(
        request.app[PG_POOL],
        principal.tenant_id,
        webhook_id,
        enabled=body.get("enabled"),
        events=body.get("events"),
        description=body["description"] if "description" in body else store.UNCHANGED,
    )
    if row is None:
        raise not_found("No such webhook")
    await audit.record(
        request, principal, "webhook.update", "webhook", str(webhook_id), details=body
    )
    return web.json_response(webhook_json(row))


async def delete_webhook(request: web.Request) -> web.Response:
    """Delete it, its pending deliveries and their history; 404 if unknown."""
    principal = await authorize(request, WEBHOOK_WRITE)
    webhook_id = _webhook_id(request)
    if not await store.delete_webhook(request.app[PG_POOL], principal.tenant_id, webhook_id):
        raise not_found("No such webhook")
    await audit.record(request, principal, "webhook.delete", "webhook", str(webhook_id))
    return web.Response(status=204)


async def list_deliveries(request: web.Request) -> web.Response:
    """Newest event first, keyset-paginated; each with its latest attempts."""
    principal = await authorize(request, WEBHOOK_READ)
    webhook_id = _webhook_id(request)
    check_query(request, ("limit", "cursor"))
    limit = parse_limit(request)
    before: int | None = None
    cursor = cursor_param(request)
    if cursor is not None:
        (before,) = decode_cursor(cursor, int)
    pool = request.app[PG_POOL]
    if await store.get_webhook(pool, principal.tenant_id, webhook_id) is None:
        raise not_found("No such webhook")
    rows = await store.list_deliveries(pool, principal.tenant_id, webhook_id, limit + 1, before)
    headers: dict[str, str] = {}
    if len(rows) > limit:
        rows = rows[:limit]
        headers["Link"] = next_link(request, encode_cursor(rows[-1]["outbox_id"]))
    return web.json_response([delivery_json(r) for r in rows], headers=headers)


async def send_test_event(request: web.Request) -> web.Response:
    """Queue a ``webhook.test`` event for this webhook alone (202: the dispatcher sends it)."""
    principal = await authorize(request, WEBHOOK_WRITE)
    webhook_id = _webhook_id(request)
    try:
        event_id = await store.emit_test(request.app[PG_POOL], principal.tenant_id, webhook_id)
    except store.WebhookDisabled:
        raise conflict(
            "The webhook is disabled: enable it (PATCH enabled: true) to test it"
        ) from None
    if event_id is None:
        raise not_found("No such webhook")
    await audit.record(
        request,
        principal,
        "webhook.test",
        "webhook",
        str(webhook_id),
        details={"eventId": str(event_id)},
    )
    return web.json_response({"eventId": str(event_id)}, status=202)
