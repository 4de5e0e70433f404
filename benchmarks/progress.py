"""Progress lines on stderr: what runs now, how long the suite has run, how long is left.

The remaining time is an estimate from the plan (the load seconds still scheduled plus a
per-phase start-up allowance), corrected by how far the suite already ran over or under it.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Call :meth:`plan` once with the total scheduled seconds, then :meth:`step` per load run."""

    def __init__(self, quiet: bool = False) -> None:
        self._started = time.monotonic()
        self._planned = 0.0
        self._consumed = 0.0
        self._quiet = quiet

    def plan(self, seconds: float) -> None:
        self._planned += seconds

    def consume(self, seconds: float) -> None:
        """Mark ``seconds`` of the plan as done (the step that announced them is over)."""
        self._consumed += seconds

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def step(self, phase: str, detail: str) -> None:
        remaining = max(0.0, self._planned - self._consumed)
        self.say(f"[{_clock(self.elapsed())} elapsed, ~{_clock(remaining)} left] {phase}: {detail}")

    def say(self, line: str) -> None:
        if not self._quiet:
            print(line, file=sys.stderr, flush=True)
