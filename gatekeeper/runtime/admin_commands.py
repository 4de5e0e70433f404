"""The admin CLI's ``gatekeeper devices …``, ``gatekeeper tokens …`` and ``gatekeeper audit``.

Each command is one or a few HTTP calls to a running admin API (:mod:`admin_client`), printed
as a table for people or, with ``--json``, as the API's JSON. :func:`add_parsers` puts the
commands on the ``gatekeeper`` parser; :func:`admin_runner.run` runs the one parsed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Final

from gatekeeper.runtime.admin_client import AdminClient
from gatekeeper.runtime.admin_config import connection_flags
from gatekeeper.runtime.admin_runner import EPILOG, Streams, leaf, paging_flags, show_list
from gatekeeper.runtime.admin_tables import (
    AUDIT_COLUMNS,
    DEVICE_COLUMNS,
    HISTORY_COLUMNS,
    TOKEN_COLUMNS,
    print_device,
    print_json,
    print_rows,
)

__all__ = ["COMMANDS", "add_parsers"]

COMMANDS: Final = frozenset({"devices", "tokens", "audit"})


# --- the parsers -------------------------------------------------------------------------------


def _device_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device_id", metavar="DEVICE_ID", help="the device's identifier")


def _add_devices(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    devices = sub.add_parser(
        "devices",
        help="list, show, block, unblock, rename devices; their history; clear a clone conflict",
        epilog=EPILOG,
    )
    actions = devices.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = leaf(actions, "list", "list devices, most recently active first", _list, parent)
    listing.add_argument(
        "-q",
        "--search",
        help="case-insensitive part of the name or identifier (default: every device)",
    )
    listing.add_argument(
        "--blocked",
        choices=("all", "hide", "only"),
        default="all",
        help="all devices, hide blocked ones, or only blocked ones (default all)",
    )
    paging_flags(listing, "devices")
    listing.add_argument(
        "--cursor", help="start after this position, as printed when more remain (default: none)"
    )
    _device_id(leaf(actions, "show", "show one device's details", _show, parent))
    block = leaf(actions, "block", "block a device: every request gets 403", _block, parent)
    _device_id(block)
    block.add_argument("--reason", help="why, kept in the audit log (default: none)")
    block.add_argument(
        "--mode",
        choices=("enforce", "shadow"),
        default="enforce",
        help="shadow: forward the device's requests, counted as shadow_blocked; blocking again"
        " with the other mode switches it (default: enforce)",
    )
    _device_id(leaf(actions, "unblock", "unblock a device", _unblock, parent))
    rename = leaf(actions, "rename", "set or clear a device's custom name", _rename, parent)
    _device_id(rename)
    names = rename.add_mutually_exclusive_group(required=True)
    names.add_argument("name", nargs="?", metavar="NAME", help="the new name")
    names.add_argument("--clear", action="store_true", help="remove the custom name (default: off)")
    history = leaf(
        actions,
        "history",
        "a device's app, OS and hardware changes, newest first",
        _history,
        parent,
    )
    _device_id(history)
    paging_flags(history, "records")
    clear = "acknowledge a device's clone conflict: conflictAt back to none, its history kept"
    _device_id(leaf(actions, "clear-conflict", clear, _clear_conflict, parent))


def _add_tokens(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    tokens = sub.add_parser(
        "tokens", help="create, list and revoke personal access tokens", epilog=EPILOG
    )
    actions = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = leaf(
        actions, "create", "create a token; its secret is printed only this once", _create, parent
    )
    create.add_argument("name", metavar="NAME", help="what the token is for")
    create.add_argument(
        "--expires-at",
        metavar="RFC3339",
        help="expiry, e.g. 2030-01-01T00:00:00Z (default: never)",
    )
    leaf(actions, "list", "list tokens, newest first, revoked ones included", _tokens, parent)
    revoke = leaf(actions, "revoke", "revoke a token", _revoke, parent)
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="the token's id (tokens list)")


# The audit route's filters: flag, query parameter, help.
_AUDIT_FILTERS: Final = (
    ("--target", "targetId", "only entries about this device id or token id"),
    ("--actor", "actor", "only entries by this actor (the token's subject)"),
    ("--action", "action", "only this action, e.g. device.block or token.create"),
    ("--since", "since", "only entries at or after this RFC 3339 time"),
    ("--until", "until", "only entries before this RFC 3339 time"),
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``devices``, ``tokens`` and ``audit`` to the ``gatekeeper`` command's subparsers."""
    parent = connection_flags()
    _add_devices(sub, parent)
    _add_tokens(sub, parent)
    audit = leaf(
        sub, "audit", "who did what to which device or token, newest first", _audit, parent
    )
    for flag, param, text in _AUDIT_FILTERS:
        audit.add_argument(flag, dest=param, help=f"{text} (default: any)")
    paging_flags(audit, "entries")


# --- the commands ------------------------------------------------------------------------------


async def _list(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    params = {"blocked": args.blocked}
    if args.search:
        params["q"] = args.search
    if args.cursor:
        params["cursor"] = args.cursor
    await show_list(client, args, io, ["devices"], params, DEVICE_COLUMNS, "devices")


async def _show(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    device, _ = await client.call("GET", client.tenant_path("devices", args.device_id))
    if args.json:
        print_json(device, io.out)
    else:
        print_device(device, io.out)


async def _device_change(
    client: AdminClient,
    args: argparse.Namespace,
    io: Streams,
    method: str,
    suffix: Sequence[str],
    body: Any,
    said: str,
) -> None:
    device, _ = await client.call(
        method, client.tenant_path("devices", args.device_id, *suffix), body=body
    )
    if args.json:
        print_json(device, io.out)
    else:
        print(said, file=io.out)


async def _block(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    body = {"reason": args.reason} if args.reason else {}
    said = f"blocked {args.device_id}" + (f" (reason: {args.reason})" if args.reason else "")
    if args.mode == "shadow":
        body["mode"] = "shadow"
        said = "shadow-" + said
    await _device_change(client, args, io, "POST", ["block"], body, said)


async def _unblock(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    await _device_change(client, args, io, "POST", ["unblock"], None, f"unblocked {args.device_id}")


async def _rename(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    name = None if args.clear else args.name
    said = f"renamed {args.device_id} to {name!r}" if name else f"cleared {args.device_id}'s name"
    await _device_change(client, args, io, "PUT", [], {"name": name}, said)


async def _clear_conflict(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    said = f"cleared {args.device_id}'s clone conflict"
    await _device_change(client, args, io, "POST", ["conflict", "clear"], None, said)


async def _history(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    segments = ["devices", args.device_id, "history"]
    await show_list(client, args, io, segments, {}, HISTORY_COLUMNS, "history records")


async def _create(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    body = {"name": args.name}
    if args.expires_at:
        body["expiresAt"] = args.expires_at
    token, _ = await client.call("POST", client.tenant_path("tokens"), body=body)
    if args.json:
        print_json(token, io.out)
        return
    # The secret alone on stdout, so `$(gatekeeper tokens create …)` captures just it.
    print(
        f"created token {token['tokenId']} ({args.name}); its secret is shown only this once:",
        file=io.err,
    )
    print(token["token"], file=io.out)


async def _tokens(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    tokens, _ = await client.call("GET", client.tenant_path("tokens"))
    print_rows(tokens, TOKEN_COLUMNS, "tokens", args.json, io.out, io.err)


async def _revoke(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    await client.call("DELETE", client.tenant_path("tokens", args.token_id))
    if args.json:
        print_json({"tokenId": args.token_id, "revoked": True}, io.out)
    else:
        print(f"revoked {args.token_id}", file=io.out)


async def _audit(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    params = {p: getattr(args, p) for _, p, _ in _AUDIT_FILTERS if getattr(args, p)}
    await show_list(client, args, io, ["audit"], params, AUDIT_COLUMNS, "audit entries")
