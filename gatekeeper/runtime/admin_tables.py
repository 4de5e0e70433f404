"""How the admin CLI prints the admin API's JSON: aligned tables and key/value cards for people,
the JSON itself for scripts.

Device attributes come from request headers any device may send, so every cell is made safe for
a terminal first: control characters (an escape sequence could rewrite the screen or the title
bar) are shown as ``?``. ``--json`` output is the API's JSON untouched and needs none of this.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO

__all__ = [
    "AUDIT_COLUMNS",
    "DELIVERY_COLUMNS",
    "DEVICE_COLUMNS",
    "HISTORY_COLUMNS",
    "TOKEN_COLUMNS",
    "WEBHOOK_COLUMNS",
    "Column",
    "cell",
    "print_card",
    "print_device",
    "print_json",
    "print_rows",
    "print_table",
    "print_webhook",
    "when",
]

# C0 and C1 controls and DEL; tabs and newlines too, since a cell is one line.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WIDEST: Final = 40
_NONE: Final = "-"

Column = tuple[str, Callable[[dict[str, Any]], str]]


def cell(value: Any, width: int | None = _WIDEST) -> str:
    """``value`` as one safe line, cut to ``width`` characters with an ellipsis."""
    if value is None or value == "":
        return _NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = _CONTROL.sub("?", str(value))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def when(value: Any) -> str:
    """An RFC 3339 timestamp to the second, for reading (``2024-05-01 01:00:00Z``)."""
    if not isinstance(value, str) or len(value) < 19:
        return cell(value)
    return cell(value[:10] + " " + value[11:19] + "Z")


def _field(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: cell(row.get(name))


def _joined(*names: str) -> Callable[[dict[str, Any]], str]:
    def show(row: dict[str, Any]) -> str:
        parts = [str(row[n]) for n in names if row.get(n)]
        return cell(" ".join(parts)) if parts else _NONE

    return show


def _status(device: dict[str, Any]) -> str:
    if device.get("isBlocked"):
        return "blocked"
    return "active" if device.get("isEnabled", True) else "disabled"


DEVICE_COLUMNS: Final[Sequence[Column]] = (
    ("DEVICE ID", _field("deviceId")),
    ("NAME", lambda d: cell(d.get("name"))),
    ("APPLICATION", _joined("application", "applicationVersion")),
    ("MANUFACTURER", _field("manufacturer")),
    ("MODEL", _field("model")),
    ("STATUS", _status),
    ("LAST ACTIVITY", lambda d: when(d.get("lastActivityAt"))),
)


def _change(record: dict[str, Any]) -> str:
    previous = record.get("previous") or {}
    current = record.get("current") or {}
    changed = record.get("changedFields") or []
    if not record.get("previous"):
        return "first seen: " + cell(
            ", ".join(f"{f}={current[f]}" for f in changed if current.get(f)), None
        )
    return cell(
        "; ".join(f"{f}: {previous.get(f) or '-'} -> {current.get(f) or '-'}" for f in changed),
        None,
    )


HISTORY_COLUMNS: Final[Sequence[Column]] = (
    ("RECORDED AT", lambda r: when(r.get("recordedAt"))),
    ("CHANGE", _change),
)

TOKEN_COLUMNS: Final[Sequence[Column]] = (
    ("TOKEN ID", lambda t: cell(t.get("tokenId"), None)),
    ("NAME", _field("name")),
    ("PREFIX", _field("prefix")),
    ("CREATED", lambda t: when(t.get("createdAt"))),
    ("EXPIRES", lambda t: when(t.get("expiresAt"))),
    ("LAST USED", lambda t: when(t.get("lastUsedAt"))),
    ("REVOKED", lambda t: when(t.get("revokedAt"))),
)

AUDIT_COLUMNS: Final[Sequence[Column]] = (
    ("AT", lambda e: when(e.get("at"))),
    ("ACTOR", _field("actor")),
    ("ACTION", _field("action")),
    ("TARGET", lambda e: cell(f"{e.get('targetType')}/{e.get('targetId')}", None)),
    ("REASON", _field("reason")),
)


def _webhook_status(hook: dict[str, Any]) -> str:
    if not hook.get("enabled"):
        return "disabled"
    return "failing" if hook.get("failingSince") else "enabled"


def _events(hook: dict[str, Any]) -> str:
    return cell(",".join(str(e) for e in hook.get("events") or []), None)


# A receiver's URL is what the API answers to Webhook.Read; the secret is never on a row.
WEBHOOK_COLUMNS: Final[Sequence[Column]] = (
    ("WEBHOOK ID", lambda h: cell(h.get("webhookId"), None)),
    ("URL", _field("url")),
    ("STATUS", _webhook_status),
    ("CREATED", lambda h: when(h.get("createdAt"))),
    ("EVENTS", _events),
)


def _last_attempt(delivery: dict[str, Any]) -> str:
    """The latest attempt (the log is in the order they were made): its status, or why none."""
    log = delivery.get("attemptLog") or []
    if not log or not isinstance(log[-1], dict):
        return _NONE
    last = log[-1]
    answer = f"HTTP {last['status']}" if last.get("status") is not None else "no answer"
    if isinstance(last.get("durationMs"), int | float):
        answer += f" in {last['durationMs']:.0f} ms"
    if last.get("error"):
        answer += f": {last['error']}"
    return cell(answer, None)


DELIVERY_COLUMNS: Final[Sequence[Column]] = (
    ("CREATED", lambda d: when(d.get("createdAt"))),
    ("EVENT ID", lambda d: cell(d.get("eventId"), None)),
    ("TYPE", _field("type")),
    ("DEVICE", _field("deviceId")),
    ("STATE", _field("state")),
    ("ATTEMPTS", _field("attempts")),
    ("NEXT ATTEMPT", lambda d: when(d.get("nextAttemptAt"))),
    ("LAST ATTEMPT", _last_attempt),
)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], out: TextIO) -> None:
    """Left-aligned columns two spaces apart under an upper-case header, like ``kubectl get``;
    the last column is not padded."""
    cells = [[show(row) for _, show in columns] for row in rows]
    widths = [
        max([len(title)] + [len(r[i]) for r in cells]) for i, (title, _) in enumerate(columns)
    ]
    for line in [[title for title, _ in columns], *cells]:
        padded = [text.ljust(width) for text, width in zip(line[:-1], widths, strict=False)]
        print("  ".join([*padded, line[-1]]), file=out)


def print_json(data: Any, out: TextIO) -> None:
    """The API's JSON as it came, indented."""
    json.dump(data, out, indent=2, ensure_ascii=False)
    out.write("\n")


def print_rows(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    what: str,
    as_json: bool,
    out: TextIO,
    err: TextIO,
) -> None:
    """A list as JSON, as a table, or (empty, for people) ``no <what>`` on ``err``."""
    if as_json:
        print_json(list(rows), out)
    elif rows:
        print_table(rows, columns, out)
    else:
        print(f"no {what}", file=err)


def print_card(pairs: Sequence[tuple[str, Any]], out: TextIO) -> None:
    """``label:  value`` lines, the values aligned."""
    width = max(len(label) for label, _ in pairs) + 1
    for label, value in pairs:
        print(f"{label + ':':<{width}}  {cell(value, None)}", file=out)


_CARD: Final = (
    ("deviceId", "Device ID"),
    ("name", "Name"),
    ("description", "Description"),
    ("type", "Type"),
    ("isEnabled", "Enabled"),
    ("isBlocked", "Blocked"),
    ("blockedAt", "Blocked at"),
    ("blockReason", "Block reason"),
    ("application", "Application"),
    ("applicationVersion", "Application version"),
    ("os", "OS"),
    ("osVersion", "OS version"),
    ("manufacturer", "Manufacturer"),
    ("model", "Model"),
    ("firstSeenAt", "First seen"),
    ("lastActiveAt", "Last active"),
    ("lastDataUploadAt", "Last data upload"),
    ("lastActivityAt", "Last activity"),
    ("conflictAt", "Clone conflict"),
    ("createdAt", "Created"),
    ("updatedAt", "Updated"),
)
_NOT_ON_CARD: Final = frozenset({"displayName", "settings"})


def print_device(device: dict[str, Any], out: TextIO) -> None:
    """A Device as a card: the contract's fields in a fixed order, then any others."""
    pairs: list[tuple[str, Any]] = [(label, device.get(key)) for key, label in _CARD]
    known = {key for key, _ in _CARD} | _NOT_ON_CARD
    # Fields a newer admin API adds are shown under their own names rather than hidden.
    pairs += [(key, value) for key, value in device.items() if key not in known]
    if device.get("settings"):
        pairs.append(("Settings", json.dumps(device["settings"], separators=(",", ":"))))
    print_card(pairs, out)


_WEBHOOK_CARD: Final = (
    ("webhookId", "Webhook ID"),
    ("url", "URL"),
    ("description", "Description"),
    ("enabled", "Enabled"),
    ("disabledAt", "Disabled at"),
    ("failingSince", "Failing since"),
    ("createdAt", "Created"),
)
# Never printed from a card, whatever a server sends: the signing secret is shown once, by the
# commands that make one (``webhooks create``, ``webhooks reset-secret``).
_NEVER_ON_CARD: Final = frozenset({"events", "secret", "previousSecret"})


def print_webhook(hook: dict[str, Any], out: TextIO) -> None:
    """A Webhook as a card: the contract's fields in a fixed order, then any others."""
    pairs: list[tuple[str, Any]] = [(label, hook.get(key)) for key, label in _WEBHOOK_CARD]
    known = {key for key, _ in _WEBHOOK_CARD} | _NEVER_ON_CARD
    pairs += [(key, value) for key, value in hook.items() if key not in known]
    pairs.insert(2, ("Events", ", ".join(str(e) for e in hook.get("events") or [])))
    print_card(pairs, out)
