"""``/docs``: the API explorer, Swagger UI on ``/openapi.json``, served by this server alone.

Swagger UI's files come from the ``openapi-ui-bundles`` wheel (Swagger UI 5, which reads
OpenAPI 3.1), the initializer from ``static/explorer.js`` beside this module; the page names
nothing off this server, so it works offline. "Authorize" takes a bearer token (what
``gatekeeper token`` prints; the document declares the scheme) and "Try it out" is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web
from openapi_ui_bundles.swagger_ui import static_path as _SWAGGER_UI

from admin_api.errors import not_found

__all__ = ["ASSETS", "asset", "docs_page"]

_JS: Final = "text/javascript; charset=utf-8"
# Each file the page loads, by the name in its URL: where it is and its content type. Only
# these are served (nothing else of the bundle's folder, nothing by a path given in the URL).
ASSETS: Final[dict[str, tuple[Path, str]]] = {
    "swagger-ui.css": (_SWAGGER_UI / "swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": (_SWAGGER_UI / "swagger-ui-bundle.js", _JS),
    "favicon-32x32.png": (_SWAGGER_UI / "favicon-32x32.png", "image/png"),
    "explorer.js": (Path(__file__).parent / "static" / "explorer.js", _JS),
}

# Swagger UI runs its two scripts (no inline script, no eval), sets inline styles, draws icons
# from data: URIs, and calls this API on this origin: nothing more is allowed.
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# URLs relative to /docs, so the page also works behind a path prefix.
_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Gatekeeper admin API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
<noscript>The explorer needs JavaScript. The API is described by
<a href="openapi.json">openapi.json</a> (OpenAPI 3.1).</noscript>
<div id="swagger-ui" data-openapi="openapi.json"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/explorer.js"></script>
</body>
</html>
"""


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=_PAGE, content_type="text/html", headers=_HEADERS)


async def asset(request: web.Request) -> web.StreamResponse:
    """One of :data:`ASSETS`; conditional requests (ETag, Last-Modified) answer 304."""
    found = ASSETS.get(request.match_info["asset"])
    if found is None:
        raise not_found("No such file of the API explorer")
    path, content_type = found
    # Revalidated on each use: the names carry no version, and an upgrade changes the files.
    headers = {**_HEADERS, "Content-Type": content_type, "Cache-Control": "no-cache"}
    return web.FileResponse(path, headers=headers)
