"""The admin API's Prometheus metrics, on a registry of its own.

The proxy may run in the same process (``gatekeeper up``), so nothing here touches the default
registry. Labels are bounded: the route *template*, a known method, the status code.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest

# No `*_created` series, as on the proxy (see gatekeeper/edge/storemetrics.py).
disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = ["METRICS", "AdminMetrics", "metrics_handler", "metrics_middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "unmatched"


class AdminMetrics:
    """Every admin metric, registered on :attr:`registry` when constructed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # CPU, memory and open files of the admin process (process_* names).
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "gatekeeper_admin_requests_total",
            "Admin API requests answered.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gatekeeper_admin_request_duration_seconds",
            "Admin API request duration.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.edge_sync_errors = Counter(
            "gatekeeper_admin_edge_sync_errors_total",
            "Changes committed to Postgres that could not be written to the Redis edge view.",
            registry=self.registry,
        )
        self.reconciles = Counter(
            "gatekeeper_admin_reconcile_total",
            "Rebuilds of the Redis edge view by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.primary_changes = Counter(
            "gatekeeper_admin_redis_primary_changes_total",
            "Times the Redis server holding the edge view became another process (a failover,"
            " a restart); each one triggers a reconcile.",
            registry=self.registry,
        )
        self.audit_errors = Counter(
            "gatekeeper_admin_audit_errors_total",
            "Audit records that could not be written after a change.",
            registry=self.registry,
        )

        # The webhook dispatcher (admin_api/webhook_dispatcher.py). The queue is the database's,
        # so every replica reports the same depth and age: aggregate them with max, not sum.
        self.webhook_deliveries = Counter(
            "gatekeeper_webhook_deliveries_total",
            "Webhook delivery attempts by result: delivered, retry (failed, tried again later),"
            " failed (given up, or its webhook was disabled).",
            ["result"],
            registry=self.registry,
        )
        self.webhook_queue_depth = Gauge(
            "gatekeeper_webhook_queue_depth",
            "Webhook work waiting: events not yet fanned out, deliveries pending.",
            ["queue"],
            registry=self.registry,
        )
        self.webhook_oldest_seconds = Gauge(
            "gatekeeper_webhook_oldest_undelivered_seconds",
            "Age of the oldest event not yet fanned out or delivered (0 when none).",
            registry=self.registry,
        )
        for queue in ("events", "deliveries"):
            self.webhook_queue_depth.labels(queue)
        for result in ("delivered", "retry", "failed"):
            self.webhook_deliveries.labels(result)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", AdminMetrics)


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request; the outermost middleware, so it sees the final status."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = _route_label(request)
        method = request.method if request.method in _METHODS else "OTHER"
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.duration.labels(route).observe(time.perf_counter() - started)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
