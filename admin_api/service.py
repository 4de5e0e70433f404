"""The admin API as a service the ``gatekeeper`` command runs: own stores, own port, clean stop.

Used as ``gatekeeper.services`` entry point ``admin``::

    service = AdminService(settings)
    await service.start()      # opens Postgres and Redis, reconciles the edge view, listens
    print(service.port)
    await service.stop()       # stops accepting, finishes in-flight requests, closes stores
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Final

import asyncpg
from aiohttp import web

from admin_api.app import create_app
from admin_api.database import open_admin_pool
from admin_api.edgesync import EDGE_SYNC
from admin_api.server import AdminRunner
from admin_api.stalejob import stale_job_ctx
from admin_api.webhook_dispatcher import webhook_dispatcher_ctx
from gatekeeper.hangup import on_hangup
from gatekeeper.listening import listen_error
from gatekeeper.settings import Settings, SettingsError, check_jwt_secret, mask_url
from gatekeeper.store.clients import CONNECT_ERRORS, RedisClient, StoreUnavailable, open_redis
from gatekeeper.tls import load_chain, server_context

__all__ = ["AdminService"]

_log = logging.getLogger(__name__)
_SHUTDOWN_TIMEOUT: Final = 10.0


class AdminService:
    """Owns the admin API's stores, application and listening socket."""

    def __init__(self, settings: Settings) -> None:
        if not settings.database_url or not settings.redis_url:
            raise SettingsError("the admin API needs database_url and redis_url")
        if settings.jwt_secret is not None:
            check_jwt_secret(settings.jwt_secret)
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._read_pool: asyncpg.Pool | None = None
        self._redis: RedisClient | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._tls: ssl.SSLContext | None = None
        self._stop_reloading: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"AdminService(port={self._port}, database={mask_url(self._settings.database_url)})"

    @property
    def port(self) -> int:
        """The bound port (the real one when ``admin_port`` is 0)."""
        if self._port is None:
            raise RuntimeError("AdminService is not started")
        return self._port

    async def start(self) -> None:
        settings = self._settings
        assert settings.database_url is not None and settings.redis_url is not None
        try:
            try:
                self._pool = await open_admin_pool(settings.database_url)
            except CONNECT_ERRORS as exc:
                # The command prints this one line and exits: which setting, where, and why.
                raise StoreUnavailable("database_url", settings.database_url, exc) from exc
            if settings.database_read_url:
                # No connection yet (min_size 0): a replica that is down at start costs the
                # list a 503 until it is back, not the whole admin API.
                self._read_pool = await open_admin_pool(settings.database_read_url, min_size=0)
                _log.info("admin device list reads from %s", mask_url(settings.database_read_url))
            self._redis = open_redis(settings.redis_url)
            app = create_app(settings, self._pool, self._redis, read_pool=self._read_pool)
            app.cleanup_ctx.append(stale_job_ctx)  # the daily stale-device deletion
            app.cleanup_ctx.append(webhook_dispatcher_ctx)  # webhook deliveries (issue 14)
            self._runner = AdminRunner(
                app, shutdown_timeout=_SHUTDOWN_TIMEOUT, access_log=_log.getChild("access")
            )
            await self._runner.setup()
            # Rebuild the edge view from the truth before serving; if Redis is down the service
            # still starts (not ready) and the background reconciler keeps trying.
            if not await app[EDGE_SYNC].reconcile_now():
                app[EDGE_SYNC].failed(RuntimeError("reconcile at start failed"))
            self._tls = server_context(settings)
            site = web.TCPSite(
                self._runner, settings.host, settings.admin_port, ssl_context=self._tls
            )
            try:
                await site.start()
            except OSError as exc:
                # The command prints this one line and exits: which port, and why.
                raise listen_error(settings.host, settings.admin_port, exc) from exc
        except BaseException:
            await self.stop()
            raise
        self._port = _bound_port(self._runner)
        if self._tls is not None:
            self._stop_reloading = on_hangup(self.reload_tls)
        scheme = "https" if self._tls else "http"
        _log.info("admin API listening on %s://%s:%d", scheme, settings.host, self._port)

    def reload_tls(self) -> None:
        """Load the certificate chain again (SIGHUP): new handshakes present it, open
        connections keep theirs."""
        if self._tls is not None:
            load_chain(self._tls, self._settings)
            _log.info("admin API: TLS certificate reloaded")

    async def stop(self) -> None:
        """Graceful: stop accepting, let in-flight requests finish, then close the stores."""
        if self._stop_reloading is not None:
            self._stop_reloading()
            self._stop_reloading = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        for pool in (self._read_pool, self._pool):
            if pool is not None:
                await pool.close()
        self._pool = self._read_pool = None
        self._port = None


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the admin API is not listening on a TCP port")
