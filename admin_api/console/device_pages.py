"""The devices list (search, blocked filter, pages, CSV) and a device's details and actions.

Every read and change is a call to the admin API's own routes (:mod:`apicall`).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from admin_api.console.access import Form, Outcome, action, page, take_flash
from admin_api.console.apicall import API_CLIENT, ApiError, api_path
from admin_api.console.bulk_pages import BLOCKED_CHOICES, BULK_ACTIONS, dry_run, list_filters
from admin_api.console.render import console_path, render
from admin_api.console.session import Session

__all__ = [
    "block",
    "clear_conflict",
    "device_page",
    "devices_csv",
    "devices_page",
    "disable",
    "enable",
    "rename",
    "reset_key",
    "unblock",
]

PAGE_SIZE: Final = 50
HISTORY_SIZE: Final = 50


def _filters(request: web.Request) -> dict[str, str]:
    return list_filters(request.query)


@page
async def devices_page(request: web.Request, session: Session) -> web.Response:
    filters = _filters(request)
    query = {**filters, "limit": str(PAGE_SIZE)}
    cursor = request.query.get("cursor")
    if cursor:
        query["cursor"] = cursor
    devices: list[dict[str, Any]] = []
    next_url = None
    error = None
    try:
        result = await request.app[API_CLIENT].call(
            request, session, "GET", api_path(session.tenant, "devices"), query=query
        )
        devices = result.body
        if result.next_cursor is not None:
            next_url = "?" + urlencode({**filters, "cursor": result.next_cursor})
    except ApiError as exc:
        if exc.status not in (400, 422):
            raise
        error = exc.message  # a search the API refuses: said next to the search form
    bulk = request.query.get("bulk")
    confirm = None
    if bulk in BULK_ACTIONS and error is None:
        # The count first: the confirming form is shown with what the operation would change.
        confirm = {"operation": bulk, **await dry_run(request, session, bulk, filters)}
    context = {
        "session": session,
        "flash": await take_flash(request, session),
        "confirm": confirm,
        "filters": filters,
        "bulk_urls": {op: "?" + urlencode({**filters, "bulk": op}) for op in BULK_ACTIONS},
        "devices": devices,
        "q": filters.get("q", ""),
        "blocked": filters["blocked"],
        "choices": BLOCKED_CHOICES,
        "next_url": next_url,
        "paged": bool(cursor),
        "csv_url": console_path(session.tenant, "devices.csv") + "?" + urlencode(filters),
        "error": error,
    }
    return render(request, "devices.html", context)


@page
async def devices_csv(request: web.Request, session: Session) -> web.StreamResponse:
    """The API's CSV of the current filter, relayed as it streams (no buffering here)."""
    client = request.app[API_CLIENT]
    path = api_path(session.tenant, "devices")
    async with client.stream(request, session, path, _filters(request)) as upstream:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": 'attachment; filename="devices.csv"',
            }
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response


def _device_id(request: web.Request) -> str:
    return request.match_info["deviceId"]


def _device_page_url(request: web.Request) -> str:
    return console_path(request.match_info["tenant"], "devices", _device_id(request))


@page
async def device_page(request: web.Request, session: Session) -> web.Response:
    client, device_id = request.app[API_CLIENT], _device_id(request)
    device_path = api_path(session.tenant, "devices", device_id)
    device = (await client.call(request, session, "GET", device_path)).body
    history = await client.call(
        request, session, "GET", device_path + "/history", query={"limit": str(HISTORY_SIZE)}
    )
    context = {
        "session": session,
        "flash": await take_flash(request, session),
        "device": device,
        "history": history.body,
        "more_history": history.next_cursor is not None,
        "confirm_block": request.query.get("confirm") == "block" and not device["isBlocked"],
        "page_url": _device_page_url(request),
    }
    return render(request, "device.html", context)


def _text(form: Form, name: str) -> str | None:
    """A form field, trimmed; None when empty (the API's "no value")."""
    value = form.get(name)
    if not isinstance(value, str):
        return None
    return value.strip() or None


async def _device_call(
    request: web.Request, session: Session, method: str, suffix: str, body: Any
) -> Outcome:
    path = api_path(session.tenant, "devices", _device_id(request)) + suffix
    await request.app[API_CLIENT].call(request, session, method, path, json=body)
    return Outcome(_device_page_url(request))


@action("rename", _device_page_url)
async def rename(request: web.Request, session: Session, form: Form) -> Outcome:
    """An empty name clears the custom name: the identifier is shown again."""
    return await _device_call(request, session, "PUT", "", {"name": _text(form, "name")})


@action("block", _device_page_url)
async def block(request: web.Request, session: Session, form: Form) -> Outcome:
    """Enforce (the default) or shadow; blocking a shadow-blocked device enforces it."""
    body = {"reason": _text(form, "reason"), "mode": _text(form, "mode") or "enforce"}
    return await _device_call(request, session, "POST", "/block", body)


@action("unblock", _device_page_url)
async def unblock(request: web.Request, session: Session, form: Form) -> Outcome:
    return await _device_call(request, session, "POST", "/unblock", None)


@action("conflict", _device_page_url)
async def clear_conflict(request: web.Request, session: Session, form: Form) -> Outcome:
    """The clone conflict acknowledged: ``conflictAt`` back to null."""
    return await _device_call(request, session, "POST", "/conflict/clear", None)


@action("enabled", _device_page_url)
async def enable(request: web.Request, session: Session, form: Form) -> Outcome:
    return await _device_call(request, session, "PUT", "", {"isEnabled": True})


@action("enabled", _device_page_url)
async def disable(request: web.Request, session: Session, form: Form) -> Outcome:
    return await _device_call(request, session, "PUT", "", {"isEnabled": False})


@action("reset", _device_page_url)
async def reset_key(request: web.Request, session: Session, form: Form) -> Outcome:
    """A new API key, shown once on the next page (kept in Redis until then, at most a
    minute)."""
    path = api_path(session.tenant, "devices", _device_id(request), "connections", "reset")
    result = await request.app[API_CLIENT].call(request, session, "POST", path, json={})
    body = result.body
    return Outcome(
        _device_page_url(request),
        {"apiKey": body["apiKey"], "environment": body["environment"]},
    )
