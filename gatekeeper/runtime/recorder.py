"""Entry point of a node's recorder process, started and supervised by ``gatekeeper proxy``.

Run as ``python -m gatekeeper.runtime.recorder SETTINGS_JSON SOCKET_PATH``; the supervisor has
set ``PROMETHEUS_MULTIPROC_DIR``, so what this process writes joins the node's ``/metrics``. It
imports only the metrics it sets (:mod:`gatekeeper.edge.storemetrics`): see that module for why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from gatekeeper.edge.activity.service import RecorderService
from gatekeeper.edge.activity.writer import PostgresWriter
from gatekeeper.logs import configure_logging
from gatekeeper.runtime.loop import run
from gatekeeper.settings import Settings
from gatekeeper.store.clients import open_pg_pool

__all__ = ["main"]

_log = logging.getLogger(__name__)
# One transaction per piece, this many pieces at once: Postgres works on as many cores.
_WRITE_CONNECTIONS = 2


async def _orphaned(parent: int) -> None:
    """Returns when the supervisor is gone: the recorder must not outlive it."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)


async def _serve(settings: Settings, path: str) -> None:
    assert settings.database_url
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # min_size=0: the recorder starts, and answers its workers, while Postgres is down.
    pool = await open_pg_pool(settings.database_url, min_size=0, max_size=_WRITE_CONNECTIONS + 1)
    try:
        # A socket left by a predecessor that was killed: nothing listens on it any more.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        writer = PostgresWriter(
            pool, connections=_WRITE_CONNECTIONS, clone_window=settings.clone_window_seconds
        )
        service = RecorderService(writer, path)
        await service.start()
        watch = asyncio.create_task(_orphaned(os.getppid()))
        signalled = asyncio.create_task(stop.wait())
        await asyncio.wait([watch, signalled], return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        signalled.cancel()
        await asyncio.wait([watch, signalled])
        await service.stop(time.monotonic() + settings.shutdown_drain_seconds)
        _log.info("recorder stopped after %d groups", service.groups_written)
    finally:
        try:
            await asyncio.wait_for(pool.close(), 10.0)
        except BaseException:
            pool.terminate()
            raise


def main() -> None:
    settings = Settings.from_mapping(json.loads(Path(sys.argv[1]).read_text()))
    configure_logging(settings.log_level, settings.log_format, "recorder")
    run(_serve(settings, sys.argv[2]))


if __name__ == "__main__":
    main()
