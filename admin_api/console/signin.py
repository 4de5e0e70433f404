"""Signing in with an access token, and out.

The token arrives in a POSTed form (never in a URL the server sees: ``gatekeeper up``'s link
carries it in the fragment, which console.js posts). It is checked by the admin API's own
verifier; the session then lives as long as the token does.
"""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web

from admin_api.auth import VERIFIER
from admin_api.console.access import SESSIONS, SIGN_IN, forbidden, signed_out
from admin_api.console.render import console_path
from admin_api.console.session import COOKIE, check_csrf, clear_cookie, same_origin, set_cookie
from admin_api.errors import Problem

__all__ = ["sign_in", "sign_in_page", "sign_out"]

_SIGN_IN_FAILED: Final = "The access token was not accepted"


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


async def sign_in_page(request: web.Request) -> web.Response:
    """The sign-in form, or straight to the devices of a signed-in browser's tenant."""
    session = await request.app[SESSIONS].load(request.cookies.get(COOKIE))
    if session is not None:
        return _see_other(console_path(session.tenant, "devices"))
    return signed_out(request, None)


async def sign_in(request: web.Request) -> web.Response:
    if not same_origin(request):
        return forbidden(request, None, "The form was sent from another site.")
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not token.strip():
        return signed_out(request, "Enter an access token.", status=400)
    verifier = request.app[VERIFIER]
    try:
        claims = await verifier.verify(token.strip())
        principal = verifier.principal(claims)
    except Problem as exc:
        # The verifier's detail says why (expired, wrong audience, ...) and never echoes the
        # token; a 503 (identity provider unreachable) keeps its own status.
        message = f"{_SIGN_IN_FAILED}: {exc.detail}" if exc.detail else _SIGN_IN_FAILED
        return signed_out(request, message, status=exc.status)
    expires_at = int(claims["exp"])
    if expires_at <= time.time():  # inside the verifier's leeway: valid, but not for a session
        return signed_out(request, f"{_SIGN_IN_FAILED}: The token has expired", status=401)
    session = await request.app[SESSIONS].create(
        token.strip(), principal.tenant_id, principal.subject, expires_at
    )
    response = _see_other(console_path(session.tenant, "devices"))
    set_cookie(response, request, session)
    return response


async def sign_out(request: web.Request) -> web.Response:
    """Ends the session in Redis (not only in this browser), then the sign-in page."""
    sessions = request.app[SESSIONS]
    session = await sessions.load(request.cookies.get(COOKIE))
    if session is not None:
        form = await request.post()
        csrf = form.get("csrf")
        if not same_origin(request) or not check_csrf(
            session, csrf if isinstance(csrf, str) else None
        ):
            return forbidden(request, session, "The form was not sent from this console.")
        await sessions.delete(session)
    response = _see_other(SIGN_IN)
    clear_cookie(response, request)
    return response
