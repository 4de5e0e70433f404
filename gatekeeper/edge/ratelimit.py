"""The per-device rate limit: a token bucket per ``(tenant, device)`` in the worker's memory.

A bucket is one float, the moment it would be full again (GCRA's "theoretical arrival time"):
a request spends one token by pushing that moment one emission interval (1/rate) later, and is
refused when the moment would lie more than ``burst`` intervals ahead. A bucket whose moment has
passed is full: it says nothing a missing bucket would not, so it can be dropped at any time.
That is what keeps memory bounded: the dict is swept of full buckets when it reaches its cap (and
at most once a minute otherwise), and if every bucket is still in use, the oldest are forgotten
(those devices start again from a full bucket: the limit fails open, never closed).

Each of a node's N workers enforces its share (rate/N, burst/N rounded up): connections are spread
over the workers, so a device's requests are too (docs/decisions.md, "Per-device rate limit").
:func:`device_limiter` returns None when the limit is off, so the hot path pays one attribute test.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from gatekeeper.settings import Settings
from gatekeeper.types import SYSTEM_CLOCK, Clock, DeviceKey

__all__ = ["DeviceRateLimiter", "RateLimit", "device_limiter", "retry_after"]

# A full sweep walks every bucket; without pressure from the cap it runs at most this often.
_SWEEP_SECONDS = 60.0
# Float sums of 1/rate drift by ulps: a request exactly at the limit is admitted.
_SLACK = 1e-9


class RateLimit:
    """One rate, as a worker enforces it: an emission interval and a depth, in seconds."""

    __slots__ = ("burst", "depth", "interval", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        self.depth = burst * self.interval + _SLACK * self.interval

    @classmethod
    def share(cls, rate: float, burst: int, workers: int) -> RateLimit | None:
        """One worker's share of a node-wide ``rate`` and ``burst`` (0: a second's worth), or
        None for no limit. The burst share is rounded up, and is at least 1: a worker that could
        admit nothing would refuse a device whose one connection landed on it."""
        if rate <= 0:
            return None
        whole = burst if burst > 0 else math.ceil(rate)
        return cls(rate / workers, max(1, math.ceil(whole / workers)))


class DeviceRateLimiter:
    """The buckets of one worker. :meth:`admit` is called once per request from a known device,
    after the denial checks (a denied request spends no token)."""

    __slots__ = ("_buckets", "_default", "_max", "_next_sweep", "_now", "_tenants", "forgotten")

    def __init__(
        self,
        default: RateLimit | None,
        tenants: Mapping[str, RateLimit | None],
        *,
        max_devices: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._default = default
        self._tenants = dict(tenants)
        self._max = max_devices
        # The real clock's own function, not SystemClock's method: one call less per request.
        self._now: Callable[[], float] = (
            time.monotonic if clock is SYSTEM_CLOCK else clock.monotonic
        )
        self._buckets: dict[DeviceKey, float] = {}
        self._next_sweep = self._now() + _SWEEP_SECONDS
        self.forgotten = 0  # buckets dropped while still in use (the cap is too small)

    def __len__(self) -> int:
        return len(self._buckets)

    def limit_for(self, tenant: str) -> RateLimit | None:
        return self._tenants.get(tenant, self._default)

    def admit(self, key: DeviceKey) -> float:
        """0.0 to admit the request (a token is spent), else the seconds until one token is
        back (the request is refused and spends nothing)."""
        limit = self._tenants.get(key[0], self._default) if self._tenants else self._default
        if limit is None:
            return 0.0
        now = self._now()
        buckets = self._buckets
        full_at = buckets.get(key)
        if full_at is None:
            if len(buckets) >= self._max or now >= self._next_sweep:
                buckets = self._sweep(now)
            full_at = now
        elif full_at < now:
            full_at = now
        spent = full_at + limit.interval
        if spent - now > limit.depth:
            return spent - now - limit.depth + _SLACK * limit.interval
        buckets[key] = spent
        return 0.0

    def _sweep(self, now: float) -> dict[DeviceKey, float]:
        """Drops the full buckets; at the cap, if that frees too little, forgets the oldest until
        an eighth of the cap is free, so the next sweep is at least that many new devices away
        (a sweep walks every bucket: amortised, it costs at most eight steps per new device)."""
        self._next_sweep = now + _SWEEP_SECONDS
        pressed = len(self._buckets) >= self._max
        kept = {key: full_at for key, full_at in self._buckets.items() if full_at > now}
        room = self._max - max(1, self._max // 8)
        if pressed and len(kept) > room:
            excess = len(kept) - room
            self.forgotten += excess
            # Dicts keep insertion order: the first keys are the devices first seen longest ago.
            for key in list(kept)[:excess]:
                del kept[key]
        self._buckets = kept
        return kept


def retry_after(seconds: float) -> int:
    """Retry-After is whole seconds (RFC 9110 §10.2.3); rounded up, so a client that waits that
    long finds a token, and never 0, which would invite an immediate retry."""
    return max(1, math.ceil(seconds))


def device_limiter(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> DeviceRateLimiter | None:
    """The worker's limiter, or None when no tenant has a rate limit (the default)."""
    workers = settings.workers
    burst = settings.device_rate_limit_burst
    default = RateLimit.share(settings.device_rate_limit_per_second, burst, workers)
    tenants = {
        tenant: RateLimit.share(rate, burst, workers)
        for tenant, rate in settings.device_rate_limit_tenants.items()
    }
    if default is None and all(limit is None for limit in tenants.values()):
        return None
    return DeviceRateLimiter(
        default, tenants, max_devices=settings.device_rate_limit_max_devices, clock=clock
    )
