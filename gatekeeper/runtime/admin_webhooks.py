"""``gatekeeper webhooks …``: manage a tenant's webhooks through a running admin API (the routes
of docs/webhooks.md), in the manner of ``devices`` and ``tokens`` (:mod:`admin_commands`), run by
:mod:`admin_runner`.

``create`` takes the receiver's URL as an argument: ``--url`` is the admin API's, as for every
admin command. The signing secret is printed by ``create`` and ``reset-secret`` only, alone on
stdout with the "shown only this once" line on stderr, as ``tokens create`` prints a token;
every other command prints what the API answers, which never holds a secret.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Final

from gatekeeper.runtime.admin_client import AdminClient
from gatekeeper.runtime.admin_config import connection_flags
from gatekeeper.runtime.admin_runner import (
    EPILOG,
    Streams,
    leaf,
    paging_flags,
    show_list,
)
from gatekeeper.runtime.admin_tables import (
    DELIVERY_COLUMNS,
    WEBHOOK_COLUMNS,
    print_json,
    print_webhook,
    when,
)
from gatekeeper.store.outbox import EVENT_TYPES

__all__ = ["COMMANDS", "add_parsers"]

COMMANDS: Final = frozenset({"webhooks"})


# --- the parsers -------------------------------------------------------------------------------


def _grace(raw: str) -> int | float:
    """Seconds, a finite number of at least 0 (the API checks the upper bound: its 422)."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds of at least 0, not {raw!r}")
    return int(value) if value.is_integer() else value


def _webhook_id(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("webhook_id", metavar="WEBHOOK_ID", help="the webhook's id (webhooks list)")
    return parser


def _add_create(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    create = leaf(
        actions,
        "create",
        "create a webhook; its signing secret is printed only this once",
        _create,
        parent,
    )
    # Positional, not --url: every admin command's --url is the admin API's own.
    create.add_argument(
        "target",
        metavar="RECEIVER_URL",
        help="where to POST the events: http(s), public unless the admin API allows private"
        " targets",
    )
    create.add_argument(
        "--event",
        dest="events",
        action="append",
        required=True,
        metavar="TYPE",
        help=f"an event type to deliver, repeatable; one of {', '.join(EVENT_TYPES)} (no"
        " default: required, at least one)",
    )
    create.add_argument("--description", help="what the webhook is for (default: none)")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``webhooks`` to the ``gatekeeper`` command's subparsers."""
    parent = connection_flags()
    webhooks = sub.add_parser(
        "webhooks",
        help="create, list, pause, enable, test, delete webhooks; their deliveries; new secrets",
        epilog=EPILOG,
    )
    actions = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = leaf(
        actions, "list", "list webhooks, newest first (never their secrets)", _list, parent
    )
    paging_flags(listing, "webhooks")
    _webhook_id(leaf(actions, "show", "show one webhook's details", _show, parent))
    _add_create(actions, parent)
    pause = "pause a webhook: no events are queued for it until it is enabled"
    _webhook_id(leaf(actions, "pause", pause, _pause, parent))
    enable = "enable a paused webhook, or one disabled after a day of failures"
    _webhook_id(leaf(actions, "enable", enable, _enable, parent))
    delete = "delete a webhook, its pending deliveries and their history"
    _webhook_id(leaf(actions, "delete", delete, _delete, parent))
    test = "queue a webhook.test event for this webhook alone (see its deliveries)"
    _webhook_id(leaf(actions, "test", test, _test, parent))
    deliveries = leaf(
        actions,
        "deliveries",
        "a webhook's deliveries, newest event first, with their latest attempt",
        _deliveries,
        parent,
    )
    paging_flags(_webhook_id(deliveries), "deliveries")
    reset = leaf(
        actions,
        "reset-secret",
        "give a webhook a new signing secret, printed only this once",
        _reset_secret,
        parent,
    )
    _webhook_id(reset)
    reset.add_argument(
        "--grace",
        type=_grace,
        metavar="SECONDS",
        help="the replaced secret keeps signing beside the new one this long, up to 7 days, so"
        " the receiver can switch without refusing a delivery (default: 0, the new one alone)",
    )


# --- the commands ------------------------------------------------------------------------------


async def _list(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    await show_list(client, args, io, ["webhooks"], {}, WEBHOOK_COLUMNS, "webhooks")


async def _show(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    hook, _ = await client.call("GET", client.tenant_path("webhooks", args.webhook_id))
    if args.json:
        print_json(hook, io.out)
    else:
        print_webhook(hook, io.out)


def _print_secret(secret: str, said: str, io: Streams) -> None:
    # The secret alone on stdout, so `$(gatekeeper webhooks create …)` captures just it; what
    # people read goes to stderr.
    print(f"{said}; it is shown only this once:", file=io.err)
    print(secret, file=io.out)


async def _create(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    body: dict[str, Any] = {"url": args.target, "events": args.events}
    if args.description is not None:
        body["description"] = args.description
    hook, _ = await client.call("POST", client.tenant_path("webhooks"), body=body)
    if args.json:
        print_json(hook, io.out)
        return
    _print_secret(hook["secret"], f"created webhook {hook['webhookId']} with a signing secret", io)


async def _set_enabled(
    client: AdminClient, args: argparse.Namespace, io: Streams, enabled: bool
) -> None:
    hook, _ = await client.call(
        "PATCH", client.tenant_path("webhooks", args.webhook_id), body={"enabled": enabled}
    )
    if args.json:
        print_json(hook, io.out)
    else:
        print(f"{'enabled' if enabled else 'paused'} {args.webhook_id}", file=io.out)


async def _pause(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    await _set_enabled(client, args, io, False)


async def _enable(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    await _set_enabled(client, args, io, True)


async def _delete(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    await client.call("DELETE", client.tenant_path("webhooks", args.webhook_id))
    if args.json:
        # The API answers 204 with no body; a script still gets a document, as `tokens revoke`.
        print_json({"webhookId": args.webhook_id, "deleted": True}, io.out)
    else:
        print(f"deleted {args.webhook_id}", file=io.out)


async def _test(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    queued, _ = await client.call("POST", client.tenant_path("webhooks", args.webhook_id, "test"))
    if args.json:
        print_json(queued, io.out)
        return
    print(f"queued test event {queued['eventId']} for {args.webhook_id}", file=io.out)
    print(f"see it delivered: gatekeeper webhooks deliveries {args.webhook_id}", file=io.err)


async def _deliveries(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    segments = ["webhooks", args.webhook_id, "deliveries"]
    await show_list(client, args, io, segments, {}, DELIVERY_COLUMNS, "deliveries")


async def _reset_secret(client: AdminClient, args: argparse.Namespace, io: Streams) -> None:
    body = None if args.grace is None else {"graceSeconds": args.grace}
    answer, _ = await client.call(
        "POST", client.tenant_path("webhooks", args.webhook_id, "secret", "reset"), body=body
    )
    if args.json:
        print_json(answer, io.out)
        return
    until = answer.get("previousSecretExpiresAt")
    said = f"new signing secret for {args.webhook_id}"
    said += (
        f" (the old one signs too until {when(until)})" if until else " (the old one signs no more)"
    )
    _print_secret(answer["secret"], said, io)
