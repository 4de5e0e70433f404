"""Figures that reliability probes report, collected into ``docs/reliability.md``.

A probe (a fault test, the bypass corpus, the soak run) calls :func:`record` with its name and
its counts. Nothing is written unless ``GATEKEEPER_RELIABILITY_OUT`` names a file: then each call
appends one JSON line to it, which ``python -m benchmarks reliability`` reads back to build the
report. Tests assert their own figures; this only keeps them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["record"]

ENV = "GATEKEEPER_RELIABILITY_OUT"


def record(probe: str, **figures: Any) -> None:
    """Append ``{"probe": probe, "at": <unix time>, **figures}`` to the report file, if any."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"probe": probe, "at": round(time.time(), 3), **figures}, sort_keys=True)
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")
