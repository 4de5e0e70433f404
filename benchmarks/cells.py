"""Table cells of the generated Markdown pages (the soak's and docs/reliability.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["cell"]


def cell(value: Any) -> str:
    """``—`` for None, floats without trailing zeros, ``|`` escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
    return str(value).replace("|", "\\|")
