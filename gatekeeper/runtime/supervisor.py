"""``gatekeeper proxy --workers N``: N worker processes on one port (SO_REUSEPORT), the node's
recorder process, and one ops port.

The supervisor owns the metrics port: its ``/metrics`` sums every worker and the recorder
(prometheus-client's multiprocess mode), its ``/readyz`` is ready when every worker is alive and
ready. A worker or recorder that dies is replaced. On SIGTERM the workers drain first, handing
their last activity to the recorder, which is stopped last, once it has written it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from gatekeeper import __version__
from gatekeeper.build_info import describe as describe_build
from gatekeeper.edge import metrics
from gatekeeper.edge.ops import create_ops_app
from gatekeeper.edge.upstream.tls import upstream_tls
from gatekeeper.hangup import on_hangup
from gatekeeper.listening import CANNOT_LISTEN, check_port, listen_error
from gatekeeper.runtime.embedded import free_port
from gatekeeper.runtime.process_metrics import NodeProcessCollector
from gatekeeper.runtime.recorder_process import RecorderProcess
from gatekeeper.settings import Settings
from gatekeeper.tls import server_context

__all__ = ["Supervisor"]

_log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        if settings.proxy_port == 0:
            settings = settings.replace(proxy_port=free_port(settings.host))
        self.settings = settings
        # Made by start(): a supervisor that never starts leaves no directory behind.
        self._dir = Path()
        self._workers: list[subprocess.Popen[bytes]] = []
        self._stopping = False
        self._monitor: asyncio.Task[None] | None = None
        self._stack: contextlib.AsyncExitStack | None = None  # set while running
        # Set when a worker could not take the proxy port: the command then stops and fails.
        self.failed = asyncio.Event()
        self.metrics_port = settings.metrics_port
        self.recorder: RecorderProcess | None = None

    def _env(self) -> dict[str, str]:
        return dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(self._dir / "metrics"))

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gatekeeper.runtime.worker",
                str(self._dir / "settings.json"),
                str(self._dir / "recorder.sock"),
            ],
            env=self._env(),
        )

    def _processes_by_role(self) -> dict[str, list[int]]:
        recorder = self.recorder.pid if self.recorder is not None else None
        return {
            "supervisor": [os.getpid()],
            "worker": [w.pid for w in self._workers],
            "recorder": [recorder] if recorder is not None else [],
        }

    def readiness(self) -> dict[str, bool]:
        alive = bool(self._workers) and all(w.poll() is None for w in self._workers)
        metrics_dir = self._dir / "metrics"
        # The aggregated minimum covers only the workers that have written their gauge file: a
        # worker still starting has none, and must not be outvoted by the ready ones.
        reporting = all((metrics_dir / f"gauge_livemin_{w.pid}.db").exists() for w in self._workers)
        registry = metrics.summed_registry(str(metrics_dir))
        ready_values = [
            s.value for m in registry.collect() if m.name == "gatekeeper_ready" for s in m.samples
        ]
        workers_ready = reporting and len(ready_values) > 0 and min(ready_values) >= 1
        return {
            "ready": alive and workers_ready and not self._stopping,
            "workers_alive": alive,
            "workers_ready": workers_ready,
            "stopping": self._stopping,
            # Not a condition of readiness: without it the workers serve and keep coalescing.
            "recorder_alive": self.recorder is not None and self.recorder.alive,
        }

    async def start(self) -> None:
        """Check the proxy port, listen on the metrics port, then fork the workers; raises
        ``ListenError`` (with no worker forked) if either port is taken. A failure half-way
        unwinds what was entered."""
        if self._stack is not None:
            raise RuntimeError("Supervisor is already started")
        s = self.settings
        # Before any fork: a worker that cannot bind only exits, and the supervisor would
        # replace it forever; the probe makes a taken port a prompt error instead.
        check_port(s.host, s.proxy_port)
        # Unreadable TLS files (listener or upstream): one line now, not N workers failing later.
        server_context(s)
        upstream_tls(s)
        async with contextlib.AsyncExitStack() as stack:
            self._dir = Path(tempfile.mkdtemp(prefix="gatekeeper-metrics-"))
            stack.callback(shutil.rmtree, self._dir, ignore_errors=True)
            (self._dir / "metrics").mkdir()
            settings_file = self._dir / "settings.json"
            settings_file.write_text(json.dumps(s.to_mapping()))
            settings_file.chmod(0o600)
            # The workers' directory is named to the /metrics view, not written to this
            # process's environment: the supervisor runs in the command's process.
            summed = functools.partial(
                metrics.exposition,
                str(self._dir / "metrics"),
                [NodeProcessCollector(self._processes_by_role)],
            )
            runner = web.AppRunner(create_ops_app(self.readiness, summed), access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            try:
                await web.TCPSite(runner, s.host, s.metrics_port).start()
            except OSError as exc:
                raise listen_error(s.host, s.metrics_port, exc) from exc
            self.metrics_port = runner.addresses[0][1]
            # Before the workers, stopped after them: they hand it their last batches.
            recorder = self.recorder = RecorderProcess(
                settings_file, self._dir / "recorder.sock", self._env(), self._dir / "metrics"
            )
            await recorder.start()
            stack.push_async_callback(recorder.stop, s.shutdown_drain_seconds)
            stack.push_async_callback(self._stop_workers)
            self._workers = [self._spawn() for _ in range(s.workers)]
            self._monitor = asyncio.create_task(self._replace_dead_workers())
            stack.push_async_callback(self._stop_monitor)
            stack.callback(on_hangup(self._pass_hangup_on))
            self._stack = stack.pop_all()
        _log.info(
            "supervisor: %d workers on %s:%d, recorder process %s, metrics on :%d"
            " (gatekeeper %s, %s)",
            s.workers,
            s.host,
            s.proxy_port,
            self.recorder.pid if self.recorder is not None else None,
            self.metrics_port,
            __version__,
            describe_build(),
        )

    def _pass_hangup_on(self) -> None:
        """SIGHUP reloads the workers' TLS certificate: each worker loads it again itself."""
        for worker in self._workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGHUP)

    async def _replace_dead_workers(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            for i, worker in enumerate(self._workers):
                if worker.poll() is not None and not self._stopping:
                    if worker.returncode == CANNOT_LISTEN:
                        # Another would fail the same way: give up, and let the command stop.
                        _log.error(
                            "worker %d cannot listen on %s:%d; giving up",
                            worker.pid,
                            self.settings.host,
                            self.settings.proxy_port,
                        )
                        self.failed.set()
                        return
                    _log.error(
                        "worker %d exited with %s; starting another", worker.pid, worker.returncode
                    )
                    mark_process_dead(  # type: ignore[no-untyped-call]
                        worker.pid, str(self._dir / "metrics")
                    )
                    self._workers[i] = self._spawn()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.readiness()["ready"]:
            if time.monotonic() > deadline:
                raise TimeoutError("workers not ready in time")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop the workers (each drains), then the metrics port. Does nothing when not running:
        never started, its start failed (and unwound itself), or already stopped."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self._stopping = True
        await stack.aclose()

    async def _stop_monitor(self) -> None:
        # First: a worker that exits during the stop must not be replaced.
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            # wait(), not a suppressed await: suppress(CancelledError) would also swallow a
            # cancellation of stop() itself.
            await asyncio.wait([self._monitor])
            if not self._monitor.cancelled() and self._monitor.exception() is not None:
                _log.error(
                    "supervisor: the worker monitor had failed: %r", self._monitor.exception()
                )

    async def _stop_workers(self) -> None:
        # SIGTERM to all first, so they drain together; then SIGKILL past the drain deadline.
        for worker in self._workers:
            if worker.poll() is None:
                worker.terminate()
        deadline = time.monotonic() + self.settings.shutdown_drain_seconds + 5
        for worker in self._workers:
            while worker.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if worker.poll() is None:
                _log.error("worker %d still running past the drain deadline; killed", worker.pid)
                worker.kill()
                worker.wait()
