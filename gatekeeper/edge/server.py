"""One proxy worker: its stores, mirror, recorder, upstream pool, listening socket and ops port.

Started by the supervisor, a worker hands its activity to the node's recorder process over
``recorder_socket``; started alone (tests, embedding), it writes to Postgres itself.

``EdgeServer.start()`` returns once the sockets listen (readiness follows when the mirror loads);
``stop()`` drains in the order an SRE expects: fail readiness, stop accepting, let in-flight
requests finish, flush the activity buffer, close the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from gatekeeper import __version__
from gatekeeper.build_info import compiled_modules
from gatekeeper.edge import metrics
from gatekeeper.edge.accesslog import AccessLog
from gatekeeper.edge.activity.link import RecorderLink
from gatekeeper.edge.activity.recorder import ActivityRecorder, BatchSink
from gatekeeper.edge.activity.writer import PostgresWriter
from gatekeeper.edge.blocklist import BlocklistMirror
from gatekeeper.edge.handler import EdgeHandler
from gatekeeper.edge.http.server import HttpServer
from gatekeeper.edge.keycache import KeyCache
from gatekeeper.edge.ops import create_ops_app
from gatekeeper.edge.ratelimit import device_limiter
from gatekeeper.edge.upstream.pool import UpstreamPool
from gatekeeper.edge.upstream.tls import upstream_tls
from gatekeeper.listening import listen_error
from gatekeeper.settings import Settings, SettingsError
from gatekeeper.store.clients import open_pg_pool, open_redis
from gatekeeper.tls import HANDSHAKE_TIMEOUT_SECONDS, load_chain, server_context

__all__ = ["EdgeServer"]

_log = logging.getLogger(__name__)
_REJECTED = metrics.HotCounter(metrics.REQUESTS.labels("invalid"))
# How long stop() waits for the background tasks to end once cancelled (they end in
# milliseconds; the deadline is for one that does not).
_TASKS_GRACE_SECONDS = 5.0
# asyncpg's close() waits for every connection to be released; a query stuck past this is cut.
_POOL_CLOSE_SECONDS = 10.0
_UPSTREAM_GRACE_SECONDS = 2.0


class EdgeServer:
    def __init__(
        self,
        settings: Settings,
        *,
        serve_ops: bool = True,
        reuse_port: bool = False,
        recorder_socket: str | None = None,
    ) -> None:
        if not settings.database_url or not settings.redis_url or not settings.upstream:
            raise SettingsError("the proxy needs database_url, redis_url and upstream")
        self.settings = settings
        # Made here, before any store is opened: a CA or client certificate file that cannot
        # be used stops the start with one line (TlsFileError), and every connection shares it.
        self._upstream_tls = upstream_tls(settings)
        self._serve_ops = serve_ops
        self._reuse_port = reuse_port
        self._recorder_socket = recorder_socket
        self._tls: ssl.SSLContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server: HttpServer | None = None
        self._listener: asyncio.Server | None = None
        self._ops_runner: web.AppRunner | None = None
        self._pool: asyncpg.Pool | None = None
        self._stack: contextlib.AsyncExitStack | None = None  # set while running
        build = "mypyc" if compiled_modules() else "python"
        metrics.BUILD_INFO.labels(__version__, build).set(1)
        self.proxy_port = settings.proxy_port
        self.metrics_port = settings.metrics_port
        self.draining = False
        # Set when a background task ends while serving: the worker stops and is replaced.
        self.failed = asyncio.Event()

    async def start(self) -> None:
        """Open the stores, start the background tasks, listen; raises ``ListenError`` if a port
        is taken. A failure half-way unwinds exactly what was entered (nothing is left open or
        running), so ``stop()`` after a failed start has nothing to do."""
        if self._stack is not None:
            raise RuntimeError("EdgeServer is already started")
        s = self.settings
        assert s.database_url and s.redis_url and s.upstream
        async with contextlib.AsyncExitStack() as stack:
            # Entered in the reverse of the order stop() must undo them: the stack unwinds last
            # in, first out, so stop() is just the stack's aclose() after readiness goes down.
            self.redis = open_redis(s.redis_url)
            stack.push_async_callback(self.redis.aclose)
            self._build(await self._activity_sink(stack))
            if self._serve_ops:
                # The ops port closes after everything but the stores: probes see "draining"
                # for as long as the drain lasts, not a refused connection.
                await self._start_ops(stack)
            # The HTTP server's drain has run by then and its client connections are closed:
            # what is still busy upstream serves nobody, so it gets only a short grace.
            stack.push_async_callback(self.upstream.close, _UPSTREAM_GRACE_SECONDS)
            stack.push_async_callback(self._flush_activity)
            self._tasks = [
                asyncio.create_task(self.mirror.run(), name="blocklist-mirror"),
                asyncio.create_task(self.recorder.run(), name="activity-recorder"),
                asyncio.create_task(self._update_gauges(), name="gauges"),
            ]
            for task in self._tasks:
                task.add_done_callback(self._task_ended)
            stack.push_async_callback(self._stop_tasks)
            server = self._server = HttpServer(
                self.handler,
                on_rejected=_REJECTED.inc,
                body_idle_seconds=s.client_body_timeout,
                max_connection_seconds=s.client_keepalive_time,
            )
            server.start()
            if self.access_log is not None:
                stack.callback(self.access_log.flush)  # after the drain: its last lines too
            stack.push_async_callback(self._close_connections, server)
            self._tls = server_context(s)
            try:
                self._listener = await asyncio.get_running_loop().create_server(
                    server,
                    s.host,
                    s.proxy_port,
                    reuse_port=self._reuse_port or None,
                    backlog=2048,
                    ssl=self._tls,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS if self._tls else None,
                )
            except OSError as exc:
                raise listen_error(s.host, s.proxy_port, exc) from exc
            self.proxy_port = self._listener.sockets[0].getsockname()[1]
            for sock in self._listener.sockets:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._stack = stack.pop_all()
        _log.info(
            "proxy listening on %s://%s:%d, upstream %s",
            "https" if self._tls else "http",
            s.host,
            self.proxy_port,
            s.upstream,
        )
        if self._upstream_tls is not None and not s.upstream_tls_verify:
            _log.warning(
                "upstream: TLS certificate verification is OFF (upstream_tls_verify = false), for"
                " testing only: anyone on the path to %s can impersonate it",
                s.upstream,
            )

    async def _activity_sink(self, stack: contextlib.AsyncExitStack) -> BatchSink:
        if self._recorder_socket is not None:
            link = RecorderLink(self._recorder_socket)
            stack.callback(link.close)
            return link
        assert self.settings.database_url
        # min_size=0: the proxy starts (and serves) even while Postgres is down.
        pool = self._pool = await open_pg_pool(self.settings.database_url, min_size=0, max_size=4)
        stack.push_async_callback(_close_pool, pool)
        # This process is its own recorder: the gauge that watches the hand-over says so.
        metrics.RECORDER_UP.set(1)
        return PostgresWriter(pool, clone_window=self.settings.clone_window_seconds)

    def reload_tls(self) -> None:
        """Load the certificate chain again (SIGHUP): new handshakes present it, open
        connections keep theirs. Raises :class:`SettingsError` (keeping the old chain) when the
        files cannot be used."""
        if self._tls is not None:
            load_chain(self._tls, self.settings)
            _log.info("proxy: TLS certificate reloaded from %s", self.settings.tls_cert_file)

    def _build(self, sink: BatchSink) -> None:
        """The proxy's parts that hold no resource of their own until their tasks run."""
        s = self.settings
        assert s.upstream
        self.keys = (
            KeyCache(self.redis, max_entries=s.key_cache_size, pepper=s.key_pepper)
            if s.auth_mode == "enforce"
            else None
        )
        self.mirror = BlocklistMirror(
            self.redis,
            resync_seconds=s.blocklist_resync_seconds,
            on_key_event=self.keys.on_event if self.keys is not None else None,
            on_resync=self.keys.clear if self.keys is not None else None,
        )
        self.recorder = ActivityRecorder(
            sink,
            flush_interval=s.flush_interval_seconds,
            flush_max_devices=s.flush_max_devices,
            max_pending=s.activity_buffer_max_devices,
            retry_max_seconds=s.flush_retry_max_seconds,
            touch_interval=s.activity_touch_seconds,
        )
        upstream = urlsplit(s.upstream)
        self.upstream = UpstreamPool(
            upstream.hostname or "127.0.0.1",
            upstream.port or (443 if self._upstream_tls is not None else 80),
            max_connections=s.upstream_pool_size,
            connect_timeout=s.upstream_connect_timeout,
            read_timeout=s.upstream_read_timeout,
            idle_timeout=s.upstream_keepalive_timeout,
            tls=self._upstream_tls,
        )
        self.access_log = None if s.access_log == "off" else AccessLog()
        self.limiter = device_limiter(s)  # None when the rate limit is off
        self.handler = EdgeHandler(
            s,
            mirror=self.mirror,
            recorder=self.recorder,
            upstream=self.upstream,
            keys=self.keys,
            access_log=self.access_log,
            limiter=self.limiter,
        )

    async def _start_ops(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        runner = self._ops_runner = web.AppRunner(create_ops_app(self.readiness), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, s.host, s.metrics_port).start()
        except OSError as exc:
            raise listen_error(s.host, s.metrics_port, exc) from exc
        self.metrics_port = runner.addresses[0][1]

    async def _close_connections(self, server: HttpServer) -> None:
        # Stop accepting first, then let the requests in flight finish: a connection accepted
        # during the drain would only be cut at its deadline. The server's shutdown cuts, and
        # awaits, whatever the drain left (its hard phase).
        if self._listener is not None:
            self._listener.close()
        await server.shutdown(self.settings.shutdown_drain_seconds)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.wait_closed()

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """Each background task runs for as long as the server does. One that ends before the
        stop (a bug, a library's surprise) leaves a worker that looks healthy and no longer
        keeps its promises (a mirror that stopped forwards every device blocked after it), so
        the worker stops and its supervisor starts another."""
        if task.cancelled() or self.draining:
            return
        _log.error(
            "task %s ended while serving: this worker stops and is replaced",
            task.get_name(),
            exc_info=task.exception(),
        )
        self.failed.set()

    async def _stop_tasks(self) -> None:
        """Cancel the background tasks and wait for them, within a deadline.

        Cancelled again while they run: on Python 3.11 ``asyncio.wait_for`` (inside redis-py
        and asyncpg) drops a cancellation that lands as the awaited call completes. The
        blocklist mirror now raises such a lost cancellation itself; the repeat is for any
        other task, since one left running would hang the event loop's shutdown."""
        tasks, self._tasks = self._tasks, []
        deadline = time.monotonic() + _TASKS_GRACE_SECONDS
        pending = set(tasks)
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                _log.error("stop: task %s had failed: %r", task.get_name(), task.exception())
        if pending:
            _log.error(
                "stop: %d task(s) ignored cancellation for %.0f s and are abandoned: %s",
                len(pending),
                _TASKS_GRACE_SECONDS,
                ", ".join(t.get_name() for t in pending),
            )

    async def _flush_activity(self) -> None:
        # After the tasks stop (no flush of the recorder's own runs alongside), before the
        # pool closes (the flush needs it).
        await self.recorder.drain(time.monotonic() + self.settings.shutdown_drain_seconds)
        metrics.flush_hot_metrics()

    async def _update_gauges(self) -> None:
        """Gauges that are states, refreshed here rather than on the hot path."""
        while True:
            metrics.READY.set(1 if self.readiness()["ready"] else 0)
            metrics.ACTIVITY_PENDING.set(self.recorder.pending)
            if self._server is not None:
                metrics.CLIENT_CONNECTIONS.set(len(self._server.connections))
            in_use, idle, waiting = self.upstream.occupancy()
            metrics.UPSTREAM_CONNECTIONS.labels("in_use").set(in_use)
            metrics.UPSTREAM_CONNECTIONS.labels("idle").set(idle)
            metrics.UPSTREAM_WAITING.set(waiting)
            metrics.flush_hot_metrics()
            await asyncio.sleep(0.5)

    def readiness(self) -> dict[str, bool]:
        mirror_ok = self.mirror.loaded or self.settings.fail_open
        return {
            "ready": mirror_ok and not self.draining,
            "blocklist_loaded": self.mirror.loaded,
            "blocklist_fresh": self.mirror.loaded and not self.mirror.stale,
            "postgres_flushing": self.recorder.last_flush_ok,
            "draining": self.draining,
        }

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.readiness()["ready"]:
            if time.monotonic() > deadline:
                raise TimeoutError("proxy not ready in time")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Graceful drain; see the module docstring for the order. Does nothing when the server
        is not running: never started, its start failed (and unwound itself), or stopped."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self.draining = True
        metrics.READY.set(0)
        await stack.aclose()


async def _close_pool(pool: asyncpg.Pool) -> None:
    # terminate() on any failure, cancellation included: a stop must not leave sockets open.
    try:
        await asyncio.wait_for(pool.close(), _POOL_CLOSE_SECONDS)
    except BaseException:
        pool.terminate()
        raise
