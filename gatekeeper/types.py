"""Types shared by every layer: a device's key, and the clock seam.

Time is read through a :class:`Clock` wherever it decides something (flush due times, the
mirror's resync, key expiry), so tests can move it instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "DeviceKey", "ManualClock", "SystemClock"]

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


class ManualClock:
    """A clock that moves only when told (:meth:`advance`): for tests, so time can pass without
    sleeping. Starts at the real time, so what it stamps looks like any other timestamp."""

    __slots__ = ("_offset", "_wall_start")

    def __init__(self) -> None:
        self._wall_start = time.time()
        self._offset = 0.0

    def monotonic(self) -> float:
        return self._offset

    def wall(self) -> float:
        return self._wall_start + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += seconds
