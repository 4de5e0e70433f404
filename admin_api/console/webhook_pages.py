"""Webhooks: the tenant's list, create (the signing secret shown once), pause and enable, a test
event, a new secret (shown once, the old one optionally signing a while longer), delete; and one
webhook's recent deliveries. Every change goes through the admin API, as the other pages do."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from admin_api.console.access import Form, Outcome, action, page, take_flash
from admin_api.console.apicall import API_CLIENT, api_path
from admin_api.console.render import console_path, render
from admin_api.console.session import Session
from gatekeeper.store.outbox import EVENT_TYPES

__all__ = [
    "create_webhook",
    "delete_webhook",
    "enable_webhook",
    "pause_webhook",
    "reset_secret",
    "test_webhook",
    "webhook_page",
    "webhooks_page",
]

LIST_SIZE: Final = 100
DELIVERIES_SHOWN: Final = 50
# The grace periods offered for a reset, in seconds, with their labels.
GRACE_CHOICES: Final = (
    ("0", "None: the old secret stops now"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
)


def _list_url(request: web.Request) -> str:
    return console_path(request.match_info["tenant"], "webhooks")


def _hook_url(request: web.Request) -> str:
    return console_path(request.match_info["tenant"], "webhooks", request.match_info["webhookId"])


def _hook_api(session: Session, request: web.Request, *rest: str) -> str:
    return api_path(session.tenant, "webhooks", request.match_info["webhookId"], *rest)


def _text(form: Form, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


@page
async def webhooks_page(request: web.Request, session: Session) -> web.Response:
    result = await request.app[API_CLIENT].call(
        request,
        session,
        "GET",
        api_path(session.tenant, "webhooks"),
        query={"limit": str(LIST_SIZE)},
    )
    context = {
        "session": session,
        "flash": await take_flash(request, session),
        "webhooks": result.body,
        "more": result.next_cursor is not None,
        "event_types": EVENT_TYPES,
    }
    return render(request, "webhooks.html", context)


@page
async def webhook_page(request: web.Request, session: Session) -> web.Response:
    client = request.app[API_CLIENT]
    hook = await client.call(request, session, "GET", _hook_api(session, request))
    deliveries = await client.call(
        request,
        session,
        "GET",
        _hook_api(session, request, "deliveries"),
        query={"limit": str(DELIVERIES_SHOWN)},
    )
    context = {
        "session": session,
        "flash": await take_flash(request, session),
        "hook": hook.body,
        "deliveries": deliveries.body,
        "grace_choices": GRACE_CHOICES,
        "confirm_delete": request.query.get("confirm") == "delete",
    }
    return render(request, "webhook.html", context)


@action("create-webhook", _list_url)
async def create_webhook(request: web.Request, session: Session, form: Form) -> Outcome:
    body: dict[str, Any] = {
        "url": _text(form, "url"),
        "events": [e for e in form.getall("events", []) if isinstance(e, str)],
    }
    if _text(form, "description"):
        body["description"] = _text(form, "description")
    result = await request.app[API_CLIENT].call(
        request, session, "POST", api_path(session.tenant, "webhooks"), json=body
    )
    created = result.body
    target = console_path(session.tenant, "webhooks", created["webhookId"])
    return Outcome(target, {"form": "secret", "secret": created["secret"]})


async def _set_enabled(request: web.Request, session: Session, enabled: bool) -> Outcome:
    await request.app[API_CLIENT].call(
        request, session, "PATCH", _hook_api(session, request), json={"enabled": enabled}
    )
    return Outcome(_hook_url(request), {"notice": "Enabled." if enabled else "Paused."})


@action("state", _hook_url)
async def pause_webhook(request: web.Request, session: Session, form: Form) -> Outcome:
    return await _set_enabled(request, session, False)


@action("state", _hook_url)
async def enable_webhook(request: web.Request, session: Session, form: Form) -> Outcome:
    return await _set_enabled(request, session, True)


@action("test", _hook_url)
async def test_webhook(request: web.Request, session: Session, form: Form) -> Outcome:
    result = await request.app[API_CLIENT].call(
        request, session, "POST", _hook_api(session, request, "test")
    )
    return Outcome(_hook_url(request), {"notice": f"Test event {result.body['eventId']} queued."})


@action("reset-secret", _hook_url)
async def reset_secret(request: web.Request, session: Session, form: Form) -> Outcome:
    grace = _text(form, "grace")
    body = {"graceSeconds": int(grace) if grace.isdigit() else 0}
    result = await request.app[API_CLIENT].call(
        request, session, "POST", _hook_api(session, request, "secret", "reset"), json=body
    )
    answer = result.body
    return Outcome(
        _hook_url(request),
        {"secret": answer["secret"], "previousUntil": answer["previousSecretExpiresAt"]},
    )


@action("delete", _hook_url)
async def delete_webhook(request: web.Request, session: Session, form: Form) -> Outcome:
    await request.app[API_CLIENT].call(request, session, "DELETE", _hook_api(session, request))
    return Outcome(_list_url(request), {"notice": "Webhook deleted."})
