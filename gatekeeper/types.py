"""Types shared by every layer: a device's key, and the clock seam.

Time is read through a :class:`Clock` wherever it decides something (flush due times, the
mirror's resync, key expiry), so tests can move it instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "DeviceKey", "SystemClock"]

DeviceKey = tuple[str, str]
"""``(tenant_id, device_id)``: a device's identity (two tenants may use the same device id)."""


class Clock(Protocol):
    """Where time comes from: ``monotonic()`` for intervals and deadlines, ``wall()`` (Unix
    seconds) for what is stored or shown."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
