"""The ops endpoints, on the metrics port and never on the proxied one: /metrics, /healthz, /readyz.

``/readyz`` answers 200 when the proxy can make correct decisions (its blocklist mirror is loaded,
or it is configured to fail open) and it is not draining. A Postgres outage does not make the
proxy unready: activity is buffered and retried (see docs/decisions.md). The body has the shape
of every ``/readyz`` (:mod:`gatekeeper.readiness`): each check, and why it is not ready.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gatekeeper.edge import metrics
from gatekeeper.readiness import readiness_answer

__all__ = ["Readiness", "create_ops_app"]

Readiness = Callable[[], dict[str, bool]]
"""Returns named checks; the first key, ``ready``, is the verdict."""

# The checks that make a proxy (or a supervisor) not ready, with the value that does, in words.
_NOT_READY_WHEN = {
    "blocklist_loaded": (False, "the blocklist mirror has not loaded from Redis yet"),
    "draining": (True, "draining for shutdown"),
    "stopping": (True, "stopping"),
    "workers_alive": (False, "a worker process is not running"),
    "workers_ready": (False, "a worker is not ready (see its log)"),
}


def _reasons(facts: dict[str, bool]) -> list[str]:
    found = [
        reason
        for name, (bad, reason) in _NOT_READY_WHEN.items()
        if name in facts and facts[name] is bad
    ]
    return found or ["not ready"]


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
        facts = {name: value for name, value in checks.items() if name != "ready"}
        reasons = [] if checks["ready"] else _reasons(facts)
        status, body = readiness_answer(facts, reasons)
        return web.Response(status=status, body=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
