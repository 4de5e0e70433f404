"""Which devices a request means: the filter the device list and the bulk operations share.

One :class:`DeviceFilter`, read from the list's query parameters (:func:`from_query`, 400 for a
bad value, as every query parameter) or from a bulk body's ``filter`` object (:func:`from_body`,
422 naming the field), and one SQL builder (:func:`where_clause`), so that a bulk operation acts
on exactly the devices the list shows for the same filter.

Every criterion narrows (they are AND-ed). The attribute fields match exactly (a recall names one
application version, not every version containing "2.1"); ``q`` stays the list's
case-insensitive substring of name or deviceId. ``lastActiveBefore`` (exclusive) and
``lastActiveAfter`` (inclusive) compare the device's last activity, and for a device never seen
its creation time: a device registered yesterday and never used is not "inactive for a year".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from admin_api.errors import FieldError, bad_request
from admin_api.schemas import RFC3339_PATTERN, SEARCH_TEXT, TIMESTAMP_PARAM
from admin_api.validation import parse_timestamp, text_param, time_param
from gatekeeper.domain.identity import DEVICE_ID_PATTERN, MAX_VALUE_LEN

__all__ = [
    "BLOCKED_CHOICES",
    "FILTER_PARAMETERS",
    "FILTER_QUERY_NAMES",
    "FILTER_SCHEMA",
    "MAX_DEVICE_IDS",
    "DeviceFilter",
    "from_body",
    "from_query",
    "where_clause",
]

# An explicit list is for "these stolen tablets", not for a fleet: a fleet is a filter.
MAX_DEVICE_IDS: Final = 10_000

# Filter field -> column of device_activity (where the list reads the attributes from).
_ATTRIBUTES: Final = {
    "application": "application",
    "applicationVersion": "application_version",
    "os": "os",
    "osVersion": "os_version",
    "manufacturer": "manufacturer",
    "model": "model",
}
# Blocked state is read from the activity row (a trigger keeps the copy, migration 0004), so the
# list's partial index on blocked devices answers blocked=only.
_BLOCKED_SQL: Final = {"all": "", "hide": " AND NOT a.is_blocked", "only": " AND a.is_blocked"}
BLOCKED_CHOICES: Final = tuple(_BLOCKED_SQL)
# Never seen: its creation stands for its last activity (see the module docstring).
_LAST_ACTIVE: Final = "COALESCE(a.last_active_at, d.created_at)"

_ATTRIBUTE_SCHEMA: Final = {
    "type": "string",
    "maxLength": MAX_VALUE_LEN,
    "pattern": r"^[^\x00]*$",
    "description": "Exact match",
}
_MOMENT: Final = {
    "type": "string",
    "format": "date-time",
    "pattern": RFC3339_PATTERN,
    "description": "RFC 3339 with an offset; a real date (422 otherwise)",
}

FILTER_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "Devices that meet every criterion given. At least one is required: to "
    'mean every device of the tenant, say so with `"blocked": "all"`.',
    "properties": {
        # Not empty: "" would be no criterion at all, and the filter would silently mean every
        # device of the tenant.
        "q": {
            **SEARCH_TEXT,
            "minLength": 1,
            "description": "Case-insensitive substring of name or deviceId",
        },
        "blocked": {"type": "string", "enum": list(BLOCKED_CHOICES)},
        **{name: _ATTRIBUTE_SCHEMA for name in _ATTRIBUTES},
        "lastActiveBefore": {**_MOMENT, "description": "Last active before (exclusive)"},
        "lastActiveAfter": {**_MOMENT, "description": "Last active at or after"},
        "deviceIds": {
            "type": "array",
            "maxItems": MAX_DEVICE_IDS,
            "items": {"type": "string", "pattern": DEVICE_ID_PATTERN},
        },
    },
    "minProperties": 1,
    "additionalProperties": False,
}

# The list's query parameters for the same criteria (all but deviceIds), as OpenAPI publishes
# them; q and blocked were already there.
FILTER_PARAMETERS: Final[dict[str, dict[str, Any]]] = {
    **{
        name: {"in": "query", "schema": _ATTRIBUTE_SCHEMA, "description": "Exact match"}
        for name in _ATTRIBUTES
    },
    "lastActiveBefore": {
        "in": "query",
        "schema": TIMESTAMP_PARAM,
        "description": "Last active before (exclusive); a never-active device counts its creation",
    },
    "lastActiveAfter": {
        "in": "query",
        "schema": TIMESTAMP_PARAM,
        "description": "Last active at or after; a never-active device counts its creation",
    },
}
FILTER_QUERY_NAMES: Final = ("q", "blocked", *FILTER_PARAMETERS)


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """The devices of one tenant that meet every criterion set (None: not a criterion)."""

    tenant_id: str
    q: str | None = None
    blocked: str = "all"
    attributes: tuple[tuple[str, str], ...] = ()  # (filter field, value)
    last_active_before: datetime | None = None
    last_active_after: datetime | None = None
    device_ids: tuple[str, ...] | None = None


def _like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def where_clause(query: DeviceFilter, args: list[Any]) -> str:
    """The WHERE clause over ``device_activity a JOIN devices d`` for ``query``; appends its
    parameters to ``args``, whose ``$1`` must be the tenant (isolation comes first)."""
    where = "a.tenant_id = $1" + _BLOCKED_SQL[query.blocked]

    def bind(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.q:
        n = bind(_like_pattern(query.q))
        # On the devices row: its trigram indexes answer a selective term.
        where += f" AND (d.name ILIKE {n} OR d.device_id ILIKE {n})"
    for name, value in query.attributes:
        where += f" AND a.{_ATTRIBUTES[name]} = {bind(value)}"
    if query.last_active_before is not None:
        where += f" AND {_LAST_ACTIVE} < {bind(query.last_active_before)}"
    if query.last_active_after is not None:
        where += f" AND {_LAST_ACTIVE} >= {bind(query.last_active_after)}"
    if query.device_ids is not None:
        where += f" AND a.device_id = ANY({bind(list(query.device_ids))}::text[])"
    return where


def from_query(request: web.Request, tenant_id: str) -> DeviceFilter:
    """The list's filter from its query parameters (checked by the caller for unknown ones)."""
    blocked = request.query.get("blocked", "all")
    if blocked not in _BLOCKED_SQL:
        raise bad_request(
            "Invalid query parameters",
            [FieldError(field="query.blocked", message="must be one of: all, hide, only")],
        )
    attributes = []
    for name in _ATTRIBUTES:
        value = text_param(request, name)
        if value is not None:
            attributes.append((name, value))
    return DeviceFilter(
        tenant_id,
        text_param(request, "q") or None,
        blocked,
        tuple(attributes),
        time_param(request, "lastActiveBefore"),
        time_param(request, "lastActiveAfter"),
    )


def from_body(tenant_id: str, body: dict[str, Any], field: str = "filter") -> DeviceFilter:
    """The filter of a bulk body, already validated against :data:`FILTER_SCHEMA`; 422 for a
    date that passes the pattern but does not exist."""
    moments = {
        name: parse_timestamp(body[name], f"{field}.{name}") if name in body else None
        for name in ("lastActiveBefore", "lastActiveAfter")
    }
    ids = body.get("deviceIds")
    return DeviceFilter(
        tenant_id,
        body.get("q") or None,
        body.get("blocked", "all"),
        tuple((name, body[name]) for name in _ATTRIBUTES if name in body),
        moments["lastActiveBefore"],
        moments["lastActiveAfter"],
        None if ids is None else tuple(dict.fromkeys(ids)),  # duplicates count once
    )
