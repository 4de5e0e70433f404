"""How an admin CLI command is declared and run: the pieces every ``gatekeeper devices|tokens|
webhooks|audit`` action shares (a leaf parser with the exit-status epilog, the paging flags, a
paged list printed as a table or JSON) and :func:`run`, which resolves where the admin API is,
calls the parsed action's handler and turns every failure into one line and an exit status.

The commands themselves are in :mod:`admin_commands` (devices, tokens, audit) and
:mod:`admin_webhooks`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

from gatekeeper.runtime.admin_client import PAGE_MAX, AdminClient, ApiError, Unreachable
from gatekeeper.runtime.admin_config import AdminConfigError, AdminTarget, resolve_target
from gatekeeper.runtime.admin_tables import Column, print_rows
from gatekeeper.runtime.loop import run as run_loop

__all__ = [
    "EPILOG",
    "EXIT_API",
    "EXIT_USAGE",
    "Handler",
    "Streams",
    "leaf",
    "paging_flags",
    "run",
    "show_list",
]

EXIT_API: Final = 1
EXIT_USAGE: Final = 2
_DEFAULT_LIMIT: Final = 100
EPILOG: Final = (
    "exit status: 0 done; 1 the admin API answered with an error (its title and detail are"
    " printed) or could not be reached; 2 a usage or configuration error (no tenant or token, a"
    " bad flag or config file)"
)


@dataclass(frozen=True, slots=True)
class Streams:
    out: TextIO
    err: TextIO


Handler = Callable[[AdminClient, argparse.Namespace, Streams], Awaitable[None]]


# --- the parsers -------------------------------------------------------------------------------


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {raw!r}")
    return value


def paging_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--limit",
        type=_positive,
        default=_DEFAULT_LIMIT,
        help=f"show at most this many {what}, following pages as needed (default"
        f" {_DEFAULT_LIMIT}; pages of up to {PAGE_MAX})",
    )
    parser.add_argument(
        "--all", action="store_true", help=f"follow every page: all {what} (default: off)"
    )


def leaf(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    text: str,
    handler: Handler,
    parent: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(
        name, help=text, description=text + ".", epilog=EPILOG, parents=[parent]
    )
    parser.set_defaults(handler=handler)
    return parser


# --- lists -------------------------------------------------------------------------------------


async def show_list(
    client: AdminClient,
    args: argparse.Namespace,
    io: Streams,
    segments: Sequence[str],
    params: Mapping[str, str],
    columns: Sequence[Column],
    what: str,
) -> None:
    """Fetch pages as ``--limit`` / ``--all`` ask, print them, and say on stderr how to go on
    when more remain (stdout stays the data alone)."""
    rows: list[Any] = []
    more = None
    async for page in client.pages(
        client.tenant_path(*segments), params, None if args.all else args.limit
    ):
        rows.extend(page.items)
        more = page.next_url
    print_rows(rows, columns, what, args.json, io.out, io.err)
    if more is not None:
        hint = f"more {what}: use --all or a bigger --limit"
        cursor = more.query.get("cursor")
        if cursor and "cursor" in vars(args):
            hint += f", or continue with --cursor {cursor}"
        print(hint, file=io.err)


# --- running one -------------------------------------------------------------------------------


async def _call(
    handler: Handler, target: AdminTarget, args: argparse.Namespace, io: Streams
) -> None:
    async with AdminClient(target) as client:
        await handler(client, args, io)


def run(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    out: TextIO,
    err: TextIO,
) -> int:
    """Run the parsed admin command; the exit status (0, :data:`EXIT_API`, :data:`EXIT_USAGE`).

    Every failure is one line on ``err`` (two when the API names bad fields), never a traceback
    and never the token."""
    try:
        target, warnings = resolve_target(
            {"url": args.url, "tenant": args.tenant, "token": args.token, "ca_file": args.ca_file},
            environ,
            args.admin_config,
        )
    except AdminConfigError as exc:
        print(f"gatekeeper: {exc}", file=err)
        return EXIT_USAGE
    for warning in warnings:
        print(f"gatekeeper: warning: {warning}", file=err)
    try:
        run_loop(_call(args.handler, target, args, Streams(out, err)))
    except ApiError as exc:
        first, *rest = exc.lines()
        print(f"gatekeeper: {first}", *rest, sep="\n", file=err)
        return EXIT_API
    except Unreachable as exc:
        print(f"gatekeeper: {exc}", file=err)
        return EXIT_API
    except BrokenPipeError:
        # The reader has gone (`… | head`): not a failure. Point stdout at /dev/null so the
        # interpreter's final flush does not report the closed pipe again.
        _discard(out)
    return 0


def _discard(out: TextIO) -> None:
    try:
        fd = out.fileno()
    except (OSError, ValueError):  # not a real file (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
