"""The one shape of ``/readyz`` on every port (proxy, supervisor, admin API).

``200`` or ``503``, and a JSON body: ``status`` (``"ready"`` or ``"not ready"``), ``checks`` (the
facts, each a boolean) and ``reasons`` (why it is not ready, in words; empty when it is). A load
balancer reads the status code; a person reads the reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["readiness_answer"]


def readiness_answer(checks: Mapping[str, bool], reasons: list[str]) -> tuple[int, dict[str, Any]]:
    """The status code and body: ready exactly when there is no reason not to be."""
    ready = not reasons
    body = {"status": "ready" if ready else "not ready", "checks": dict(checks), "reasons": reasons}
    return (200 if ready else 503), body
