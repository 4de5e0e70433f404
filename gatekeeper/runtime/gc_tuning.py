"""The garbage collector's settings for a proxy process: process-wide, so set by the commands
that own the process (``gatekeeper proxy``, a worker, ``gatekeeper up``), never by a library
class a test or an embedding program might start."""

from __future__ import annotations

import gc

__all__ = ["tune_gc_after_start"]


def tune_gc_after_start() -> None:
    """Call once the proxy has started. Everything allocated so far lives as long as the process:
    keep the collector from walking it again and again, and let the young generation grow before
    a pass (each full pass over a large heap is a pause every request in flight waits for)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
