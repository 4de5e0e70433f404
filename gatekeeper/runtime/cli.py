"""The ``gatekeeper`` command: up, proxy, admin, migrate, reconcile, token, demo-upstream, and
the admin CLI (devices, tokens, webhooks, audit: clients of a running admin API), completion."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from aiohttp import web

from gatekeeper import __version__
from gatekeeper.build_info import describe as describe_build
from gatekeeper.domain.scopes import ADMIN_SCOPES
from gatekeeper.listening import ListenError
from gatekeeper.logs import configure_logging
from gatekeeper.runtime import admin_commands, admin_runner, admin_webhooks
from gatekeeper.runtime.alert_rules import render as render_alert_rules
from gatekeeper.runtime.alert_rules import runbook_base_error
from gatekeeper.runtime.loop import run
from gatekeeper.runtime.up import Service
from gatekeeper.settings import ENV_PREFIX, Settings, SettingsError
from gatekeeper.store.clients import StoreUnavailable
from gatekeeper.tls import TlsFileError

__all__ = ["main"]

_log = logging.getLogger("gatekeeper")


COMPLETION_SHELLS = ("bash", "zsh", "tcsh")


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}


def _setting(
    parser: argparse.ArgumentParser, name: str, text: str, *short: str, **kwargs: Any
) -> None:
    """A flag for the setting ``name``, its help ending with its variable and default."""
    default = _DEFAULTS[name]
    shown = "unset" if default is None else default
    parser.add_argument(
        f"--{name.replace('_', '-')}",
        *short,
        dest=name,
        help=f"{text} (env {ENV_PREFIX}{name.upper()}; default: {shown})",
        **kwargs,
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML settings file, a [gatekeeper] table (env {ENV_PREFIX}CONFIG; default: none)",
    )
    _setting(parser, "database_url", "PostgreSQL URL (unset: the embedded one under data_dir)")
    _setting(parser, "redis_url", "Redis URL (unset: the embedded Valkey under data_dir)")
    _setting(parser, "data_dir", "where the embedded stores and the local secret live")
    _setting(parser, "host", "address the servers listen on")
    _setting(parser, "log_level", "DEBUG, INFO, WARNING or ERROR")


def _ports(parser: argparse.ArgumentParser, *names: str) -> None:
    texts = {
        "proxy_port": "the proxy's port",
        "admin_port": "the admin API's port",
        "metrics_port": "the proxy's /metrics, /healthz and /readyz port",
    }
    for name in names:
        _setting(parser, name, texts[name], type=int)


def _edge(parser: argparse.ArgumentParser) -> None:
    _setting(parser, "upstream", "the upstream's base URL, e.g. http://api.internal:8000")
    _setting(
        parser,
        "auth_mode",
        "passthrough (identify devices) or enforce (also require an API key or token)",
        choices=["passthrough", "enforce"],
    )


class _Version(argparse.Action):
    """``--version`` on one line (argparse's own action wraps it at the terminal's width)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        print(f"gatekeeper {__version__} ({describe_build()})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatekeeper", description=__doc__)
    parser.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        help="print the version and whether the hot path runs compiled, then exit",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack on this machine (embedded stores)")
    _common(up)
    _ports(up, "proxy_port", "admin_port", "metrics_port")
    _edge(up)
    up.add_argument(
        "--demo-upstream",
        action="store_true",
        help="start a built-in echo upstream and proxy to it (default: off)",
    )

    proxy = sub.add_parser("proxy", help="run the edge proxy (production)")
    _common(proxy)
    _setting(proxy, "workers", "worker processes sharing the proxy port", "-w", type=int)
    _ports(proxy, "proxy_port", "metrics_port")
    _edge(proxy)

    admin = sub.add_parser("admin", help="run the admin API (production)")
    _common(admin)
    _ports(admin, "admin_port")

    for name, text in (
        ("migrate", "apply database migrations"),
        ("reconcile", "rebuild the Redis edge view from Postgres"),
    ):
        _common(sub.add_parser(name, help=text))

    token = sub.add_parser("token", help="print a signed admin token")
    _common(token)
    token.add_argument("--tenant", required=True, help="the tenant the token is for (required)")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help=f"repeatable (default: all of {', '.join(ADMIN_SCOPES)})",
    )
    token.add_argument("--subject", default="cli", help="the token's subject (default: cli)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")

    demo = sub.add_parser("demo-upstream", help="run the built-in echo upstream")
    demo.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port (default: 8000)")

    rules = sub.add_parser(
        "alert-rules",
        help="print the Prometheus alerting rules, their runbook links under --runbook-base",
    )
    rules.add_argument(
        "--runbook-base",
        dest="runbook_base",
        default=os.environ.get("GATEKEEPER_RUNBOOK_BASE"),
        help="absolute URL where docs/operations.md is published; each alert links to its "
        "#anchor there (env GATEKEEPER_RUNBOOK_BASE; no default)",
    )

    # devices, tokens, audit, webhooks: HTTP clients of a running admin API
    # (gatekeeper/runtime/admin_*).
    admin_commands.add_parsers(sub)
    admin_webhooks.add_parsers(sub)

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script, e.g. source <(gatekeeper completion bash)",
    )
    completion.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell to complete in")
    return parser


_NOT_SETTINGS = {"command", "config", "tenant", "scope", "subject", "ttl", "demo_upstream", "port"}


def _alert_rules(base: str | None) -> int:
    problem = "--runbook-base (or GATEKEEPER_RUNBOOK_BASE) is required" if base is None else None
    problem = problem or runbook_base_error(base or "")
    if problem is not None:
        print(f"gatekeeper alert-rules: {problem}", file=sys.stderr)
        return 2
    sys.stdout.write(render_alert_rules(base or ""))
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    return Settings.load(flags, config_file=args.config)


async def _until_signalled(failed: asyncio.Event | None = None) -> None:
    """Returns on SIGINT or SIGTERM, or when ``failed`` is set (a server that cannot go on)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.create_task(event.wait()) for event in (stop, failed) if event is not None]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.wait(waits)  # ended, not left for the loop's shutdown to find


def admin_service(settings: Settings) -> Service:
    """The admin API, found through the ``gatekeeper.services`` entry point (the core never
    imports ``admin_api``)."""
    # By target: the metadata an editable install left under the distribution's old name
    # ("gatekeeper", before "gatekeeper-edge") declares the same one again.
    targets = {ep.value: ep for ep in entry_points(group="gatekeeper.services", name="admin")}
    (found,) = targets.values()
    service: Service = found.load()(settings)
    return service


def _require_stores(settings: Settings, *, redis: bool = True) -> None:
    """The store settings a command uses, and only those (``migrate`` needs no Redis)."""
    missing = [
        name
        for name, needed, value in (
            ("GATEKEEPER_DATABASE_URL", True, settings.database_url),
            ("GATEKEEPER_REDIS_URL", redis, settings.redis_url),
        )
        if needed and not value
    ]
    if missing:
        raise SettingsError(
            f"set {' and '.join(missing)} (or the flags); only `gatekeeper up` starts"
            " embedded stores"
        )


async def _proxy(settings: Settings) -> None:
    """The workers and the recorder process under a supervisor, one worker or many: the
    serving loops only serve (see docs/decisions.md, "the recorder process")."""
    _require_stores(settings)
    from gatekeeper.runtime.supervisor import Supervisor

    supervisor = Supervisor(settings)
    await supervisor.start()
    try:
        await _until_signalled(supervisor.failed)
    finally:
        await supervisor.stop()
    if supervisor.failed.is_set():
        raise ListenError(
            errno.EADDRINUSE,
            f"cannot listen on {settings.host}:"
            f"{settings.proxy_port}: a worker could not bind (see its log)",
        )


async def _admin(settings: Settings) -> None:
    _require_stores(settings)
    service = admin_service(settings)
    await service.start()
    try:
        await _until_signalled()
    finally:
        await service.stop()


async def _migrate(settings: Settings) -> None:
    _require_stores(settings, redis=False)
    from gatekeeper.store.migrate import migrate

    applied = await migrate(settings.database_url or "")
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


async def _reconcile(settings: Settings) -> None:
    _require_stores(settings)
    from gatekeeper.store.clients import (
        CONNECT_ERRORS,
        StoreUnavailable,
        open_pg_pool,
        open_redis,
    )
    from gatekeeper.store.edge_writes import reconcile

    pool = await open_pg_pool(settings.database_url or "")
    redis = open_redis(settings.redis_url or "")
    try:
        try:
            await redis.ping()
        except CONNECT_ERRORS as exc:
            raise StoreUnavailable("redis_url", settings.redis_url or "", exc) from exc
        counts = await reconcile(pool, redis)
    finally:
        await pool.close()
        await redis.aclose()
    print("edge view rebuilt: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


async def _demo_upstream(host: str, port: int) -> None:
    from gatekeeper.runtime.demo_upstream import create_demo_upstream

    runner = web.AppRunner(create_demo_upstream(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"demo upstream on http://{host}:{port}", flush=True)
    await _until_signalled()
    await runner.cleanup()


def _token(args: argparse.Namespace, settings: Settings) -> None:
    from gatekeeper.runtime.admin_tokens import find_local_secret, mint_token

    if settings.jwt_secret is None:
        explicit = settings.data_dir != Settings().data_dir
        settings = settings.replace(
            jwt_secret=find_local_secret(settings.data_dir, explicit=explicit)
        )
    print(
        mint_token(
            settings,
            args.tenant,
            args.scope or list(ADMIN_SCOPES),
            subject=args.subject,
            ttl_seconds=args.ttl,
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "completion":
        import shtab

        print(shtab.complete(_parser(), shell=args.shell))
        return 0
    if args.command in admin_commands.COMMANDS | admin_webhooks.COMMANDS:
        # A client of the admin API: none of the server settings, its own flags and variables.
        try:
            return admin_runner.run(args, os.environ, sys.stdout, sys.stderr)
        except KeyboardInterrupt:
            return 130
    try:
        if args.command == "demo-upstream":
            run(_demo_upstream(args.host, args.port))
            return 0
        if args.command == "alert-rules":
            return _alert_rules(args.runbook_base)
        settings = _settings(args)
        configure_logging(settings.log_level, settings.log_format, "gatekeeper")
        if args.command == "token":
            _token(args, settings)
            return 0
        commands: dict[str, Callable[[Settings], Awaitable[Any]]] = {
            "proxy": _proxy,
            "admin": _admin,
            "migrate": _migrate,
            "reconcile": _reconcile,
        }
        if args.command == "up":
            from gatekeeper.runtime.up import run_stack

            run(
                run_stack(
                    settings,
                    demo_upstream=args.demo_upstream,
                    until=_until_signalled,
                    admin=admin_service,
                )
            )
        else:
            run(commands[args.command](settings))  # type: ignore[arg-type]
    except (ListenError, StoreUnavailable, TlsFileError) as exc:
        # One line, no traceback: the port or the store, and the reason, are all an operator
        # needs, and every service has already unwound what it had started.
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return 1
    except SettingsError as exc:
        # After TlsFileError, which is one: a value no run can use is a usage error.
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
