"""Who may see a console page or submit a console form, and what happens when the API says no.

Pages and forms are wrapped by :func:`page` and :func:`action`, which find the session, keep it
to its own tenant (another tenant's URL gets a "not allowed" page, never data), check the CSRF
token and origin of every form, and turn the API's problem documents into readable messages.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy

from admin_api.console.apicall import ApiError
from admin_api.console.render import render
from admin_api.console.session import (
    COOKIE,
    Session,
    SessionStore,
    check_csrf,
    clear_cookie,
    same_origin,
)

__all__ = [
    "SESSIONS",
    "SIGN_IN",
    "SSO",
    "Outcome",
    "action",
    "forbidden",
    "page",
    "signed_out",
    "take_flash",
]

SIGN_IN: Final = "/console/"
SESSIONS = web.AppKey("console_sessions", SessionStore)
# Whether the sign-in page offers single sign-on (an OIDC provider is configured).
SSO = web.AppKey("console_sso", bool)

PageHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
Form = MultiDictProxy[str | bytes | bytearray | FileField]


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a successful form goes next, and what that page says once."""

    target: str
    flash: dict[str, Any] = field(default_factory=dict)


ActionHandler = Callable[[web.Request, Session, Form], Awaitable[Outcome]]


def forbidden(request: web.Request, session: Session | None, message: str) -> web.Response:
    return render(
        request,
        "error.html",
        {"session": session, "title": "Not allowed", "message": message},
        status=403,
    )


def signed_out(request: web.Request, message: str | None, *, status: int = 200) -> web.Response:
    """The sign-in page, the session cookie cleared."""
    context = {"session": None, "error": message, "sso": request.app[SSO]}
    response = render(request, "signin.html", context, status=status)
    clear_cookie(response, request)
    return response


async def take_flash(request: web.Request, session: Session) -> dict[str, Any] | None:
    """The message the last form left for this page, if any (shown once)."""
    return await request.app[SESSIONS].take_flash(session)


async def _session(request: web.Request) -> Session | None:
    return await request.app[SESSIONS].load(request.cookies.get(COOKIE))


def _other_tenant(request: web.Request, session: Session) -> web.Response | None:
    if request.match_info["tenant"] == session.tenant:
        return None
    return forbidden(
        request,
        session,
        f"You are signed in to tenant {session.tenant}; this page belongs to another tenant.",
    )


async def _expired(request: web.Request, session: Session) -> web.Response:
    await request.app[SESSIONS].delete(session)
    return signed_out(request, "Your access token is no longer valid. Sign in again.", status=401)


def page(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A tenant page (GET): sign-in first, the session's own tenant only."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        session = await _session(request)
        if session is None:
            raise web.HTTPSeeOther(SIGN_IN)
        refused = _other_tenant(request, session)
        if refused is not None:
            return refused
        try:
            return await handler(request, session)
        except ApiError as exc:
            if exc.status == 401:
                return await _expired(request, session)
            context = {"session": session, "title": exc.title, "message": exc.message}
            return render(request, "error.html", context, status=exc.status)

    return wrapper


def action(
    name: str, back: Callable[[web.Request], str]
) -> Callable[[ActionHandler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """A form (POST) named ``name``: same-origin, signed in, own tenant, CSRF token checked.

    Success and failure both redirect (303) to a page: ``Outcome.target`` or ``back(request)``,
    where an API error is shown next to the form ``name``."""

    def decorate(
        handler: ActionHandler,
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            session = await _session(request)
            if not same_origin(request):
                return forbidden(request, session, "The form was sent from another site.")
            if session is None:
                return signed_out(request, "Your session has ended. Sign in again.", status=401)
            refused = _other_tenant(request, session)
            if refused is not None:
                return refused
            form = await request.post()
            csrf = form.get("csrf")
            if not check_csrf(session, csrf if isinstance(csrf, str) else None):
                return forbidden(
                    request, session, "The form has expired or was not sent from this console."
                )
            sessions = request.app[SESSIONS]
            try:
                outcome = await handler(request, session, form)
            except ApiError as exc:
                if exc.status == 401:
                    return await _expired(request, session)
                await sessions.flash(session, {"form": name, "error": exc.message})
                raise web.HTTPSeeOther(back(request)) from None
            if outcome.flash:
                await sessions.flash(session, {"form": name, **outcome.flash})
            raise web.HTTPSeeOther(outcome.target)

        return wrapper

    return decorate
