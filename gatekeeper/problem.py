"""RFC 9457 problem details, the one error format of the proxy and the admin API.

Bytes only: the proxy's hot path imports this, and must not import aiohttp (the admin API wraps
the bytes in its own responses: admin_api/errors.py)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PROBLEM_CONTENT_TYPE", "problem_body"]

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_BASE = "https://gatekeeper.dev/problems/"


def problem_body(
    status: int, title: str, detail: str | None = None, *, type_: str | None = None, **extra: Any
) -> bytes:
    """The encoded problem document; ``type_`` is a slug under the project's problem base."""
    doc: dict[str, Any] = {
        "type": _TYPE_BASE + (type_ or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail or title,
    }
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":")).encode()
