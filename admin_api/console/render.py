"""Rendering console pages: the Jinja2 environment, and the headers every console response
carries (a strict Content-Security-Policy among them)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import jinja2
from aiohttp import web

__all__ = [
    "STATIC_DIR",
    "TEMPLATES",
    "console_headers",
    "console_path",
    "create_environment",
    "render",
    "urlpart",
]

_HERE: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = _HERE / "static"

# No inline script or style anywhere in the console, nothing from another origin, no framing,
# forms post only here. The OpenAPI explorer at /docs keeps its own policy: this one is scoped
# to /console/ (see console_headers).
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
        " frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it browsers send "Origin: null" on the console's own form posts,
    # and the origin check (session.same_origin) could no longer tell them from a foreign
    # site's. Console URLs hold no secrets; other origins still get no referrer.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def urlpart(value: str) -> str:
    """A path segment: device ids may hold '/', '?' or '#'."""
    return quote(value, safe="")


def console_path(tenant: str, *segments: str) -> str:
    """``/console/{tenant}/...`` with every segment escaped."""
    return "/".join(["/console", *(urlpart(s) for s in (tenant, *segments))])


def _when(value: str | None) -> str:
    """An RFC 3339 timestamp of the API as a compact UTC time, or an em dash."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def create_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["urlpart"] = urlpart
    env.filters["when"] = _when
    return env


TEMPLATES = web.AppKey("console_templates", jinja2.Environment)


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    html = request.app[TEMPLATES].get_template(template).render(context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


async def console_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the security headers on every /console/ response (pages, static
    files, redirects, errors); pages hold tenant data, so no cache keeps them."""
    if not request.path.startswith("/console"):
        return
    response.headers.update(_SECURITY_HEADERS)
    if not request.path.startswith("/console/static/"):
        response.headers["Cache-Control"] = "no-store"
