"""Personal access tokens (create, shown once; list; revoke) and the audit log with filters."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from admin_api.console.access import Form, Outcome, action, page, take_flash
from admin_api.console.apicall import API_CLIENT, ApiError, api_path
from admin_api.console.render import console_path, render
from admin_api.console.session import Session

__all__ = ["audit_page", "create_token", "revoke_token", "tokens_page"]

AUDIT_PAGE_SIZE: Final = 100
# Page field -> the audit route's query parameter, and the field's label.
AUDIT_FILTERS: Final = (
    ("targetId", "Target"),
    ("actor", "Actor"),
    ("action", "Action"),
)
AUDIT_TIMES: Final = (("since", "From (UTC)"), ("until", "Until (UTC)"))


def _tokens_url(request: web.Request) -> str:
    return console_path(request.match_info["tenant"], "tokens")


@page
async def tokens_page(request: web.Request, session: Session) -> web.Response:
    result = await request.app[API_CLIENT].call(
        request, session, "GET", api_path(session.tenant, "tokens")
    )
    context = {
        "session": session,
        "flash": await take_flash(request, session),
        "tokens": result.body,
    }
    return render(request, "tokens.html", context)


@action("create-token", _tokens_url)
async def create_token(request: web.Request, session: Session, form: Form) -> Outcome:
    name = form.get("name")
    body = {"name": name.strip() if isinstance(name, str) else ""}
    result = await request.app[API_CLIENT].call(
        request, session, "POST", api_path(session.tenant, "tokens"), json=body
    )
    created = result.body
    return Outcome(_tokens_url(request), {"secret": created["token"], "name": created["name"]})


@action("revoke", _tokens_url)
async def revoke_token(request: web.Request, session: Session, form: Form) -> Outcome:
    path = api_path(session.tenant, "tokens", request.match_info["tokenId"])
    await request.app[API_CLIENT].call(request, session, "DELETE", path)
    return Outcome(_tokens_url(request), {"notice": "Token revoked."})


def _audit_time(value: str) -> str:
    """A ``datetime-local`` field's value (no zone, maybe no seconds) as RFC 3339 UTC; other
    text goes to the API as typed, which says what is wrong with it."""
    if len(value) == 16 and value[10] == "T":
        return value + ":00Z"
    if len(value) == 19 and value[10] == "T":
        return value + "Z"
    return value


@page
async def audit_page(request: web.Request, session: Session) -> web.Response:
    fields = {name: request.query.get(name, "").strip() for name, _ in AUDIT_FILTERS}
    times = {name: request.query.get(name, "").strip() for name, _ in AUDIT_TIMES}
    query = {k: v for k, v in fields.items() if v}
    query.update({k: _audit_time(v) for k, v in times.items() if v})
    query["limit"] = str(AUDIT_PAGE_SIZE)
    cursor = request.query.get("cursor")
    if cursor:
        query["cursor"] = cursor
    entries: list[dict[str, Any]] = []
    next_url = None
    error = None
    path = api_path(session.tenant, "audit")
    try:
        result = await request.app[API_CLIENT].call(request, session, "GET", path, query=query)
        entries = result.body
        if result.next_cursor is not None:
            shown = {k: v for k, v in {**fields, **times}.items() if v}
            next_url = "?" + urlencode({**shown, "cursor": result.next_cursor})
    except ApiError as exc:
        if exc.status not in (400, 422):
            raise
        error = exc.message
    context = {
        "session": session,
        "entries": entries,
        "fields": fields,
        "times": times,
        "labels": dict(AUDIT_FILTERS + AUDIT_TIMES),
        "next_url": next_url,
        "paged": bool(cursor),
        "error": error,
    }
    return render(request, "audit.html", context)
