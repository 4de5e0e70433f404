"""SIGHUP, the reload signal (nginx's, and what process managers send): every part of a process
that can reload (a TLS listener) registers here, and one handler calls them all.

A process has one SIGHUP disposition, and ``loop.add_signal_handler`` replaces the previous
handler, so two servers in one process (``gatekeeper up``: the proxy supervisor and the admin
API) must share it rather than each install their own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

__all__ = ["on_hangup"]

_log = logging.getLogger(__name__)
# The process's reload callbacks, in registration order (module state: the signal is too).
_callbacks: list[Callable[[], None]] = []


def _fire() -> None:
    for callback in list(_callbacks):
        try:
            callback()
        except Exception:
            # One part that cannot reload (a bad new certificate) keeps its old state; the
            # others still reload.
            _log.exception("reload on SIGHUP failed")


def on_hangup(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` on SIGHUP from now on; returns the function that stops it."""
    loop = asyncio.get_running_loop()
    if not _callbacks:
        loop.add_signal_handler(signal.SIGHUP, _fire)
    _callbacks.append(callback)

    def remove() -> None:
        if callback in _callbacks:
            _callbacks.remove(callback)
            if not _callbacks:
                loop.remove_signal_handler(signal.SIGHUP)

    return remove
