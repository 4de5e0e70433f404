"""Starting, restarting and stopping a node's recorder process (for the supervisor).

Started before the workers (they find it listening), stopped after them (they hand it their last
batches while they drain), restarted with backoff whenever it exits in between. While it is
away the workers keep coalescing, bounded, and send again when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

__all__ = ["RecorderProcess"]

_log = logging.getLogger(__name__)

_FIRST_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 10.0
# A recorder that ran this long before exiting was healthy: the next restart is prompt again.
_HEALTHY_AFTER_SECONDS = 30.0
_LISTEN_TIMEOUT_SECONDS = 10.0


class RecorderProcess:
    def __init__(
        self, settings_file: Path, socket_path: Path, env: dict[str, str], metrics_dir: Path
    ) -> None:
        self.socket_path = socket_path
        self._settings_file = settings_file
        self._env = env
        self._metrics_dir = metrics_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Start it and wait (bounded) until it listens; then watch it."""
        self._spawn()
        if not await self._wait_listening(_LISTEN_TIMEOUT_SECONDS):
            # The workers keep coalescing and retry; the watch restarts it if it exits.
            _log.error(
                "recorder process not listening after %.0f s; workers will retry",
                _LISTEN_TIMEOUT_SECONDS,
            )
        self._watch = asyncio.create_task(self._restart_when_gone(), name="recorder-watch")

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gatekeeper.runtime.recorder",
                str(self._settings_file),
                str(self.socket_path),
            ],
            env=self._env,
        )
        self._started_at = time.monotonic()

    async def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive:
            if _accepts(self.socket_path):
                return True
            await asyncio.sleep(0.02)
        return False

    async def _restart_when_gone(self) -> None:
        backoff = _FIRST_BACKOFF_SECONDS
        while not self._stopping:
            await asyncio.sleep(0.1)
            process = self._process
            if process is None or process.poll() is None or self._stopping:
                continue
            mark_process_dead(process.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
            if time.monotonic() - self._started_at > _HEALTHY_AFTER_SECONDS:
                backoff = _FIRST_BACKOFF_SECONDS
            _log.error(
                "recorder process %d exited with %s; restarting in %.1f s",
                process.pid,
                process.returncode,
                backoff,
            )
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
            try:
                self._spawn()
            except OSError as exc:
                # Out of processes or memory for a moment: the watch must go on trying, or the
                # workers would hold activity until their buffers overflow, with no recorder ever.
                _log.error("recorder process could not be started (%s); trying again", exc)
                continue
            self.restarts += 1

    async def stop(self, drain_seconds: float) -> None:
        """SIGTERM, so it answers what it holds; SIGKILL past ``drain_seconds`` + 5."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait([self._watch])
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
        deadline = time.monotonic() + drain_seconds + 5
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            _log.error("recorder %d still running past the drain deadline; killed", process.pid)
            process.kill()
            process.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
