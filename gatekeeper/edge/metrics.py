"""The proxy's Prometheus metrics, on a registry of their own.

With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` is in each worker's environment
from its start (the supervisor spawns them so), every worker writes its values to files there,
and the supervisor's ``/metrics`` sums them (``exposition(directory)``). Gauges say how live
workers combine: ``max`` for the mirror size, ``min`` for the last sync time (the stalest worker
is the one to page about), ``sum`` for pending activity.

Labels never carry a device id, a key or free-form text; the only label is a fixed outcome.
"""

from __future__ import annotations

import glob
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gatekeeper.edge.storemetrics import (
    ACTIVITY_FLUSH_DURATION,
    ACTIVITY_FLUSHED,
    REGISTRY,
    STORE_UP,
)

__all__ = [
    "ACTIVITY_DROPPED",
    "ACTIVITY_FLUSHED",
    "ACTIVITY_FLUSH_DURATION",
    "ACTIVITY_FLUSH_ERRORS",
    "ACTIVITY_PENDING",
    "BLOCKED_DEVICES",
    "BLOCKLIST_LAST_SYNC",
    "BLOCKLIST_STALE",
    "BUILD_INFO",
    "CLIENT_CONNECTIONS",
    "CODE_CLASSES",
    "MIRROR_RESYNCS",
    "OUTCOMES",
    "READY",
    "RECORDER_UP",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_DURATION",
    "STORE_UP",
    "UPSTREAM_CONNECTIONS",
    "UPSTREAM_DURATION",
    "UPSTREAM_RESPONSES",
    "UPSTREAM_WAITING",
    "HotCounter",
    "HotHistogram",
    "bulk_observer",
    "exposition",
    "flush_hot_metrics",
    "multiprocess_dir",
    "summed_registry",
]

OUTCOMES = (
    "forwarded",
    "blocked",
    "disabled",
    "unauthorized",
    "invalid",
    "upstream_error",
    "upstream_timeout",
    "unavailable",
    "too_large",
    "rate_limited",
    "shadow_blocked",
)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


REQUESTS = Counter(
    "gatekeeper_requests_total",
    "Requests at the edge, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "gatekeeper_request_duration_seconds",
    "Time from request headers received to response headers sent by the proxy.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "gatekeeper_upstream_duration_seconds",
    "Time from sending a request upstream to receiving its response headers.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_RESPONSES = Counter(
    "gatekeeper_upstream_responses_total",
    "Responses from the upstream passed on to clients, by status class (1xx to 5xx).",
    ["code_class"],
    registry=REGISTRY,
)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
CLIENT_CONNECTIONS = Gauge(
    "gatekeeper_client_connections",
    "Client connections open on the proxy port (keep-alive idle ones included).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
UPSTREAM_CONNECTIONS = Gauge(
    "gatekeeper_upstream_connections",
    "Connections of the upstream pools, by state: in use by a request, or idle (kept alive).",
    ["state"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
UPSTREAM_WAITING = Gauge(
    "gatekeeper_upstream_pool_waiting",
    "Requests waiting for an upstream connection because the pool is at upstream_pool_size.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
BLOCKED_DEVICES = Gauge(
    "gatekeeper_blocked_devices",
    "Devices in the in-process blocked mirror.",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
BLOCKLIST_LAST_SYNC = Gauge(
    "gatekeeper_blocklist_last_sync_timestamp_seconds",
    "When the mirror was last known to match Redis (full load or live subscription).",
    registry=REGISTRY,
    multiprocess_mode="livemin",
)
BLOCKLIST_STALE = Gauge(
    "gatekeeper_blocklist_stale",
    "1 while Redis is unreachable and the proxy serves from its last mirror.",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
MIRROR_RESYNCS = Counter(
    "gatekeeper_mirror_resyncs_total",
    "Full reloads of the blocklist mirror, by reason: start, reconnect (after a lost"
    " subscription, e.g. a Redis failover), periodic, announced (a reconcile), batch_expired.",
    ["reason"],
    registry=REGISTRY,
)
ACTIVITY_PENDING = Gauge(
    "gatekeeper_activity_pending",
    "Devices with activity waiting to be flushed.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
ACTIVITY_DROPPED = Counter(
    "gatekeeper_activity_dropped",
    "Device activity records dropped because the buffer was full.",
    registry=REGISTRY,
)
ACTIVITY_FLUSH_ERRORS = Counter(
    "gatekeeper_activity_flush_errors",
    "Failed flushes of activity to Postgres.",
    registry=REGISTRY,
)
RECORDER_UP = Gauge(
    "gatekeeper_recorder_up",
    "1 when the worker's last hand-over to the node's recorder process succeeded.",
    registry=REGISTRY,
    multiprocess_mode="livemin",
)
BUILD_INFO = Gauge(
    "gatekeeper_build_info",
    "1, labelled with the version and whether the hot path runs compiled (mypyc) or as Python.",
    ["version", "build"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
READY = Gauge(
    "gatekeeper_ready",
    "1 when the proxy is ready to serve (mirror loaded, not draining).",
    registry=REGISTRY,
    multiprocess_mode="livemin",
)

if multiprocess_dir() is None:
    ProcessCollector(registry=REGISTRY)

# Pre-bound children: the hot path must not look labels up per request.
for _outcome in OUTCOMES:
    REQUESTS.labels(_outcome)
for _code_class in CODE_CLASSES:
    UPSTREAM_RESPONSES.labels(_code_class)
for _state in ("in_use", "idle"):
    UPSTREAM_CONNECTIONS.labels(_state)


class HotCounter:
    """A counter for the per-request path: a plain integer, added to its Prometheus counter by
    :func:`flush_hot_metrics` (once a second and before each scrape), so a request pays no lock
    and, in multiprocess mode, no mmap write."""

    __slots__ = ("_target", "count")

    def __init__(self, target: Counter) -> None:
        self._target = target
        self.count = 0
        _HOT.append(self)

    def inc(self) -> None:
        self.count += 1

    def flush(self) -> None:
        if self.count:
            count, self.count = self.count, 0
            self._target.inc(count)


class HotHistogram:
    """A histogram for the per-request path, flushed like :class:`HotCounter`."""

    __slots__ = ("_add", "_bounds", "_counts", "_sum")

    def __init__(self, target: Histogram) -> None:
        self._bounds, self._add = bulk_observer(target)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        _HOT.append(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        if any(counts):
            self._add(counts, total)


def bulk_observer(histogram: Histogram) -> tuple[list[float], Callable[[list[int], float], None]]:
    """A histogram's bucket bounds, and a function that adds per-bucket counts and a sum in
    bulk: the values ``Histogram.observe`` increments one observation at a time.

    The one place that reads prometheus-client's private ``Histogram`` attributes
    (``_upper_bounds``, ``_buckets``, ``_sum``: the same from 0.4 to 0.26); the library offers
    no bulk observe. An upgrade that renames them fails here, at import, not per request."""
    bounds: list[float] = list(histogram._upper_bounds)
    buckets = histogram._buckets
    total = histogram._sum

    def add(counts: list[int], sum_: float) -> None:
        for i, count in enumerate(counts):
            if count:
                buckets[i].inc(count)
        total.inc(sum_)

    return bounds, add


_HOT: list[HotCounter | HotHistogram] = []


def flush_hot_metrics() -> None:
    for metric in _HOT:
        metric.flush()


def exposition(directory: str | None = None, extra: Iterable[Collector] = ()) -> bytes:
    """The text exposition: this process's registry, or every worker's sum in multiprocess mode.
    ``directory``: the multiprocess directory to sum (the supervisor's, which does not write to
    its own environment); by default the one this process was started with, if any. ``extra``:
    collectors added to the sum (the supervisor's view of its processes)."""
    flush_hot_metrics()
    directory = directory or multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    registry = summed_registry(directory)
    ProcessCollector(registry=registry)
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _SettledCollector(MultiProcessCollector):
    """prometheus-client's multiprocess sum, without the files it cannot read yet: a process
    that is starting creates its file empty and sizes it a moment later, and reading it in
    between raises (a scrape or a readiness poll would fail for it)."""

    def collect(self) -> Iterable[Metric]:
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) >= 8:
                    files.append(path)
            except OSError:
                continue  # a dead process's file, removed meanwhile
        for _ in range(3):
            try:
                return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call,no-any-return]
            except FileNotFoundError as gone:  # removed between the listing and the read
                files.remove(str(gone.filename))
        return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call,no-any-return]


def summed_registry(directory: str) -> CollectorRegistry:
    """A registry whose collection is the sum of the processes writing to ``directory``."""
    registry = CollectorRegistry()
    _SettledCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry
