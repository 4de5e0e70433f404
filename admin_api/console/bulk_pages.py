"""Bulk block and unblock from the devices list: on every device the list's current filter
shows, after a dry run has said how many that is.

``?bulk=block`` (or ``unblock``) on the devices page asks the API for a dry run of the bulk
operation on the page's filter and shows the counts with a confirming form; the form posts here
and the API's ``bulk-block`` / ``bulk-unblock`` does the work (its scopes, validation, audit and
edge announcement). Nothing is changed without the admin having seen the count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from admin_api.console.access import Form, Outcome, action
from admin_api.console.apicall import API_CLIENT, ApiError, api_path
from admin_api.console.render import console_path
from admin_api.console.session import Session

__all__ = [
    "BLOCKED_CHOICES",
    "BULK_ACTIONS",
    "bulk_block",
    "bulk_unblock",
    "dry_run",
    "list_filters",
]

BULK_ACTIONS: Final = ("block", "unblock")
BLOCKED_CHOICES: Final = (("all", "All"), ("hide", "Hide blocked"), ("only", "Only blocked"))
_BLOCKED_VALUES: Final = frozenset(v for v, _ in BLOCKED_CHOICES)


def _list_url(tenant: str, filters: dict[str, str]) -> str:
    return console_path(tenant, "devices") + "?" + urlencode(filters)


def list_filters(values: Mapping[str, object]) -> dict[str, str]:
    """The list's filter, ``q`` and ``blocked`` (unknown values: all), from a page's query or
    from a confirming form: what the admin saw listed is what a bulk operation acts on."""
    blocked = values.get("blocked")
    filters = {
        "blocked": blocked if isinstance(blocked, str) and blocked in _BLOCKED_VALUES else "all"
    }
    q = values.get("q")
    if isinstance(q, str) and q.strip():
        filters["q"] = q.strip()
    return filters


async def dry_run(
    request: web.Request, session: Session, operation: str, filters: dict[str, str]
) -> dict[str, Any]:
    """What ``operation`` would do on ``filters``: ``{matched, changed}``, or ``{error}``."""
    path = api_path(session.tenant, "devices", f"bulk-{operation}")
    try:
        result = await request.app[API_CLIENT].call(
            request, session, "POST", path, json={"filter": filters, "dryRun": True}
        )
    except ApiError as exc:
        if exc.status == 401:
            raise
        return {"error": exc.message}
    counts: dict[str, Any] = result.body
    return counts


def _back(request: web.Request) -> str:
    return console_path(request.match_info["tenant"], "devices")


async def _bulk(request: web.Request, session: Session, form: Form, operation: str) -> Outcome:
    filters = list_filters(form)
    body: dict[str, Any] = {"filter": filters}
    reason = form.get("reason")
    if operation == "block" and isinstance(reason, str) and reason.strip():
        body["reason"] = reason.strip()
    path = api_path(session.tenant, "devices", f"bulk-{operation}")
    try:
        result = await request.app[API_CLIENT].call(request, session, "POST", path, json=body)
    except ApiError as exc:
        if exc.status == 401:
            raise
        # Shown next to the bulk form on the list it came from, its filter kept.
        return Outcome(_list_url(session.tenant, filters), {"error": exc.message})
    done = {"operation": operation, **result.body}
    return Outcome(_list_url(session.tenant, filters), {"bulk": done})


@action("bulk", _back)
async def bulk_block(request: web.Request, session: Session, form: Form) -> Outcome:
    return await _bulk(request, session, form, "block")


@action("bulk", _back)
async def bulk_unblock(request: web.Request, session: Session, form: Form) -> Outcome:
    return await _bulk(request, session, form, "unblock")
