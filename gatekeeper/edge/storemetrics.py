"""The metrics of whoever writes activity to Postgres, and the registry every edge metric is on.

Apart from :mod:`gatekeeper.edge.metrics` so that the recorder process can import them alone: in
multiprocess mode a gauge without labels gets a value (0) in every process that merely creates
it, and the recorder's zeros would then be the minimum of the workers' ``livemin`` gauges
(``gatekeeper_ready``, the blocklist's last sync). Labelled children exist only where they are
bound: the Postgres writer binds ``store="postgres"``, the blocklist mirror ``store="redis"``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

__all__ = [
    "ACTIVITY_FLUSHED",
    "ACTIVITY_FLUSH_DURATION",
    "DEVICE_CONFLICTS",
    "REGISTRY",
    "STORE_UP",
]

# No `*_created` series: a timestamp per counter and histogram that Prometheus stores as one
# more series and no dashboard or alert of ours reads (issue 11).
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

ACTIVITY_FLUSHED = Counter(
    "gatekeeper_activity_flushed",
    "Device activity records written to Postgres.",
    registry=REGISTRY,
)
ACTIVITY_FLUSH_DURATION = Histogram(
    "gatekeeper_activity_flush_duration_seconds",
    "Duration of one successful activity flush.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
DEVICE_CONFLICTS = Counter(
    "gatekeeper_device_conflicts",
    "History records flagged as conflicts: a device back on the hardware it had just left "
    "(clone detection).",
    registry=REGISTRY,
)
STORE_UP = Gauge(
    "gatekeeper_store_up",
    "1 when the last contact with the store succeeded.",
    ["store"],
    registry=REGISTRY,
    multiprocess_mode="livemin",
)
