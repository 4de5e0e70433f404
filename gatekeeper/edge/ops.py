"""The ops endpoints, on the metrics port and never on the proxied one: /metrics, /healthz, /readyz.

``/readyz`` answers 200 when the proxy can make correct decisions (its blocklist mirror is loaded,
or it is configured to fail open) and it is not draining. A Postgres outage does not make the
proxy unready: activity is buffered and retried (see docs/decisions.md). The body lists each check.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gatekeeper.edge import metrics

__all__ = ["Readiness", "create_ops_app"]

Readiness = Callable[[], dict[str, bool]]
"""Returns named checks; the first key, ``ready``, is the verdict."""


def create_ops_app(
    readiness: Readiness, exposition: Callable[[], bytes] = metrics.exposition
) -> web.Application:
    """``exposition``: what ``/metrics`` serves (the supervisor's sums its workers')."""

    async def metrics_view(_request: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        checks = readiness()
        return web.Response(
            status=200 if checks["ready"] else 503,
            body=json.dumps(checks),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
