"""One proxy worker: its stores, mirror, recorder, upstream pool, listening socket and ops port.

``EdgeServer.start()`` returns once the sockets listen (readiness follows when the mirror loads);
``stop()`` drains in the order an SRE expects: fail readiness, stop accepting, let in-flight
requests finish, flush the activity buffer, close the pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from gatekeeper import metrics
from gatekeeper.blocklist import BlocklistMirror
from gatekeeper.connections import open_pg_pool, open_redis
from gatekeeper.httpserver import HttpServer
from gatekeeper.keycache import KeyCache
from gatekeeper.ops import create_ops_app
from gatekeeper.proxy import EdgeHandler
from gatekeeper.recorder import ActivityRecorder
from gatekeeper.settings import Settings, SettingsError
from gatekeeper.upstream import UpstreamPool

__all__ = ["EdgeServer"]

_log = logging.getLogger(__name__)
_REJECTED = metrics.HotCounter(metrics.REQUESTS.labels("invalid"))


class EdgeServer:
    def __init__(self, settings: Settings, *, serve_ops: bool = True,
                 reuse_port: bool = False) -> None:
        if not settings.database_url or not settings.redis_url or not settings.upstream:
            raise SettingsError("the proxy needs database_url, redis_url and upstream")
        self.settings = settings
        self._serve_ops = serve_ops
        self._reuse_port = reuse_port
        self._tasks: list[asyncio.Task[None]] = []
        self._server: HttpServer | None = None
        self._listener: asyncio.Server | None = None
        self._ops_runner: web.AppRunner | None = None
        self._pool: asyncpg.Pool | None = None
        self.proxy_port = settings.proxy_port
        self.metrics_port = settings.metrics_port
        self.draining = False

    async def start(self) -> None:
        s = self.settings
        assert s.database_url and s.redis_url and s.upstream
        self.redis = open_redis(s.redis_url)
        # min_size=0: the proxy starts (and serves) even while Postgres is down.
        self._pool = await open_pg_pool(s.database_url, min_size=0, max_size=4)
        self.keys = (KeyCache(self.redis, max_entries=s.key_cache_size, pepper=s.key_pepper)
                     if s.auth_mode == "enforce" else None)
        self.mirror = BlocklistMirror(
            self.redis, resync_seconds=s.blocklist_resync_seconds,
            on_key_event=self.keys.on_event if self.keys is not None else None,
            on_resync=self.keys.clear if self.keys is not None else None,
        )
        self.recorder = ActivityRecorder(
            self._pool, flush_interval=s.flush_interval_seconds,
            flush_max_devices=s.flush_max_devices, max_pending=s.activity_buffer_max_devices,
            retry_max_seconds=s.flush_retry_max_seconds, touch_interval=s.activity_touch_seconds,
        )
        upstream = urlsplit(s.upstream)
        self.upstream = UpstreamPool(
            upstream.hostname or "127.0.0.1", upstream.port or 80,
            max_connections=s.upstream_pool_size, connect_timeout=s.upstream_connect_timeout,
            read_timeout=s.upstream_read_timeout,
        )
        self.handler = EdgeHandler(s, mirror=self.mirror, recorder=self.recorder,
                                   upstream=self.upstream, keys=self.keys)
        self._tasks = [asyncio.create_task(self.mirror.run(), name="blocklist-mirror"),
                       asyncio.create_task(self.recorder.run(), name="activity-recorder"),
                       asyncio.create_task(self._update_gauges(), name="gauges")]
        self._server = HttpServer(self.handler, on_rejected=_REJECTED.inc,
                                  body_idle_seconds=s.client_body_timeout)
        self._server.start()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server, s.host, s.proxy_port, reuse_port=self._reuse_port or None,
            backlog=2048)
        self.proxy_port = self._listener.sockets[0].getsockname()[1]
        for sock in self._listener.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._serve_ops:
            self._ops_runner = web.AppRunner(create_ops_app(self.readiness), access_log=None)
            await self._ops_runner.setup()
            site = web.TCPSite(self._ops_runner, s.host, s.metrics_port)
            await site.start()
            self.metrics_port = self._ops_runner.addresses[0][1]
        # Everything allocated so far lives as long as the process: keep the collector from
        # walking it again and again, and let the young generation grow before a pass (each
        # full pass over a large heap is a pause every request in flight waits for).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 1000)
        _log.info("proxy listening on %s:%d, upstream %s", s.host, self.proxy_port, s.upstream)

    async def _update_gauges(self) -> None:
        """Gauges that are states, refreshed here rather than on the hot path."""
        while True:
            metrics.READY.set(1 if self.readiness()["ready"] else 0)
            metrics.ACTIVITY_PENDING.set(self.recorder.pending)
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
        """Graceful drain; see the module docstring for the order."""
        self.draining = True
        metrics.READY.set(0)
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            await self._server.shutdown(self.settings.shutdown_drain_seconds)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.wait_closed()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.recorder.drain(time.monotonic() + self.settings.shutdown_drain_seconds)
        metrics.flush_hot_metrics()
        await self.upstream.close()
        if self._ops_runner is not None:
            await self._ops_runner.cleanup()
        if self._pool is not None:
            await self._pool.close()
        await self.redis.aclose()
