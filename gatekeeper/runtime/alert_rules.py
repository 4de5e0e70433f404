"""``gatekeeper alert-rules``: the Prometheus alerting rules, with absolute runbook links.

The rules ship inside the package (``alerts.yml`` beside this module) with ``RUNBOOK_BASE`` where
each link's base goes: the address at which the deployment publishes docs/operations.md (a wiki,
the repository's web view at the running release's tag). An alert reaches a pager or a chat
channel, where only an absolute link can be followed.
"""

from __future__ import annotations

from importlib.resources import files
from urllib.parse import urlsplit

__all__ = ["TOKEN", "render", "runbook_base_error"]

TOKEN = "RUNBOOK_BASE"


def runbook_base_error(base: str) -> str | None:
    """Why ``base`` cannot be a runbook base, or None if it can."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"runbook base must be an absolute http(s) URL, got {base!r}"
    if parts.fragment or "#" in base:
        return "runbook base must not hold a #fragment: the alert's anchor goes there"
    return None


def render(base: str) -> str:
    """The rules file with every runbook link under ``base`` (checked by the caller)."""
    template = files("gatekeeper.runtime").joinpath("alerts.yml").read_text(encoding="utf-8")
    return template.replace(TOKEN, base)
