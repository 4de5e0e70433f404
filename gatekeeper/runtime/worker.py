"""Entry point of one proxy worker process started by the supervisor (``gatekeeper proxy -w N``).

Run as ``python -m gatekeeper.runtime.worker SETTINGS_JSON RECORDER_SOCKET``; the supervisor has
already set ``PROMETHEUS_MULTIPROC_DIR`` in this process's environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from gatekeeper.edge.server import EdgeServer
from gatekeeper.hangup import on_hangup
from gatekeeper.listening import CANNOT_LISTEN, ListenError
from gatekeeper.logs import configure_logging
from gatekeeper.runtime.gc_tuning import tune_gc_after_start
from gatekeeper.runtime.loop import run
from gatekeeper.settings import Settings

__all__ = ["main"]


async def _orphaned(parent: int) -> None:
    """Returns when the supervisor is gone (killed without passing SIGTERM on): a worker must
    not outlive it and keep the port."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)


async def _serve(settings: Settings, recorder_socket: str) -> int:
    """Serve until signalled (0), orphaned (0) or failed (1: the supervisor starts another)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    edge = EdgeServer(settings, serve_ops=False, reuse_port=True, recorder_socket=recorder_socket)
    await edge.start()
    stop_reloading = on_hangup(edge.reload_tls)  # the supervisor passes SIGHUP on
    tune_gc_after_start()
    watch = asyncio.create_task(_orphaned(os.getppid()))
    signalled = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(edge.failed.wait())
    waits = [watch, signalled, failed]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    await asyncio.wait(waits)  # ended, not left for the loop's shutdown to find
    stop_reloading()
    await edge.stop()
    return 1 if edge.failed.is_set() else 0


def main() -> None:
    settings = Settings.from_mapping(json.loads(Path(sys.argv[1]).read_text()))
    configure_logging(settings.log_level, settings.log_format, "worker")
    try:
        code = run(_serve(settings, sys.argv[2]))
    except ListenError as exc:
        # The supervisor checks the port before forking; it can still be taken in between.
        # This exit code tells the supervisor not to start another worker on it.
        print(f"gatekeeper worker: {exc}", file=sys.stderr, flush=True)
        sys.exit(CANNOT_LISTEN)
    sys.exit(code)


if __name__ == "__main__":
    main()
