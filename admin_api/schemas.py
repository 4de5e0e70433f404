"""JSON Schemas (draft 2020-12) of every request body, query parameter and response of the
admin API.

Request and parameter schemas drive validation (:mod:`admin_api.validation`); all of them are
published in the OpenAPI document (:mod:`admin_api.openapi`), so the document states exactly
what the server enforces. What a schema cannot say (an expiry in the future, a cursor the
server issued, a real calendar date) is in its ``description``, and the server answers it with
the documented 400 or 422.

Patterns are ECMA-262 regular expressions, as JSON Schema specifies: ``$`` is the very end of
the string (in Python it also matches before a final newline; the validator accounts for that).
"""

from __future__ import annotations

from typing import Any, Final

from gatekeeper.domain.identity import ATTRIBUTE_FIELDS, DEVICE_ID_PATTERN

__all__ = [
    "API_KEY",
    "BLOCK_REQUEST",
    "CREATE_DEVICE",
    "CREATE_TOKEN",
    "CURSOR",
    "DEVICE_TYPES",
    "HTTP_URL_PATTERN",
    "REQUEST_SCHEMAS",
    "RESET_REQUEST",
    "RESPONSE_SCHEMAS",
    "RFC3339_PATTERN",
    "SEARCH_TEXT",
    "TIMESTAMP_PARAM",
    "UPDATE_DEVICE",
]

Schema = dict[str, Any]

# Text Postgres can store: no NUL (lone surrogates cannot be said in a pattern; they are 422 too).
_NO_NUL_PATTERN: Final = r"^[^\x00]*$"
# An http or https URL with a host (a name, IPv4 or [IPv6]) and an optional port, in printable
# ASCII: no user info (a logo URL is sent to every device), no spaces.
HTTP_URL_PATTERN: Final = (
    r"^[hH][tT][tT][pP][sS]?://"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)"
    r"(:[0-9]{1,5})?([/?#][\x21-\x7e]*)?$"
)
# RFC 3339 date-time (section 5.6) as Python can hold it: no leap second, years 0001-9998 (a
# time in 9999 with a negative offset is past Python's last representable UTC instant).
RFC3339_PATTERN: Final = (
    r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}"
    r"|99[0-8][0-9]|999[0-8])"
    r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
NAME_MAX: Final = 200
DESCRIPTION_MAX: Final = 2000
REASON_MAX: Final = 500
URL_MAX: Final = 2048
GRACE_MAX_SECONDS: Final = 7 * 24 * 3600
CURSOR_MAX: Final = 1024
SEARCH_MAX: Final = 200
API_KEY_MAX: Final = 256

_NAME: Schema = {
    "type": ["string", "null"],
    "minLength": 1,
    "maxLength": NAME_MAX,
    "pattern": _NO_NUL_PATTERN,
}
_DESCRIPTION: Schema = {
    "type": ["string", "null"],
    "maxLength": DESCRIPTION_MAX,
    "pattern": _NO_NUL_PATTERN,
}
_TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
_NULLABLE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_TEXT: Schema = {"type": ["string", "null"]}

# Query and header parameters.
CURSOR: Final[Schema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": CURSOR_MAX,
    "pattern": r"^[A-Za-z0-9_-]+$",
    "description": "Opaque: taken from the previous page's Link header. Any other value, even "
    "one of this form, is a 400.",
}
SEARCH_TEXT: Final[Schema] = {"type": "string", "maxLength": SEARCH_MAX, "pattern": _NO_NUL_PATTERN}
# A point in time given in a query parameter (the audit log's since and until).
TIMESTAMP_PARAM: Final[Schema] = {
    "type": "string",
    "format": "date-time",
    "pattern": RFC3339_PATTERN,
    "description": "RFC 3339 with an offset, for example 2026-11-22T09:00:00Z",
}
API_KEY: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": API_KEY_MAX}

CREWCHECK_SETTINGS: Final[Schema] = {
    "type": "object",
    "properties": {
        "logoUrl": {
            "type": "string",
            "maxLength": URL_MAX,
            "pattern": HTTP_URL_PATTERN,
            "description": "An http or https URL of the logo the device shows.",
        },
    },
    "required": ["logoUrl"],
    "additionalProperties": False,
}

# Settings schema per device type; a new type is one entry here.
DEVICE_TYPES: Final[dict[str, Schema]] = {"CrewCheck": CREWCHECK_SETTINGS}

CREATE_DEVICE: Final[Schema] = {
    "type": "object",
    "properties": {
        "deviceId": {
            "type": "string",
            "pattern": DEVICE_ID_PATTERN,
            "description": "Optional; generated (a UUID) when absent.",
        },
        "type": {"type": "string", "enum": sorted(DEVICE_TYPES)},
        "name": _NAME,
        "description": _DESCRIPTION,
        "settings": {"type": "object", "description": "Per type; CrewCheck: {logoUrl}."},
    },
    "required": ["type", "settings"],
    "additionalProperties": False,
    # Each type's settings, inline rather than by $ref so the server validates this very schema.
    "allOf": [
        {
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"properties": {"settings": settings}},
        }
        for name, settings in DEVICE_TYPES.items()
    ],
}

UPDATE_DEVICE: Final[Schema] = {
    "type": "object",
    "properties": {"name": _NAME, "description": _DESCRIPTION, "isEnabled": {"type": "boolean"}},
    "minProperties": 1,
    "additionalProperties": False,
}

BLOCK_REQUEST: Final[Schema] = {
    "type": "object",
    "properties": {
        "reason": {"type": ["string", "null"], "maxLength": REASON_MAX, "pattern": _NO_NUL_PATTERN},
        # shadow: the edge forwards the device's requests and counts them as shadow_blocked
        "mode": {"type": "string", "enum": ["enforce", "shadow"], "default": "enforce"},
    },
    "additionalProperties": False,
}

STALE_DAYS_MAX: Final = 36_500  # a hundred years: the column's CHECK (migration 0006)
_STALE_DAYS: Final[Schema] = {"type": ["integer", "null"], "minimum": 1, "maximum": STALE_DAYS_MAX}
TENANT_SETTINGS: Final[Schema] = {
    "type": "object",
    "properties": {
        # Unblocked devices inactive longer than this are deleted daily; null keeps them.
        "staleDeviceDays": _STALE_DAYS,
    },
    "required": ["staleDeviceDays"],
    "additionalProperties": False,
}

RESET_REQUEST: Final[Schema] = {
    "type": "object",
    "properties": {
        "graceSeconds": {"type": "number", "minimum": 0, "maximum": GRACE_MAX_SECONDS, "default": 0}
    },
    "additionalProperties": False,
}

CREATE_TOKEN: Final[Schema] = {
    "type": "object",
    "properties": {
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": NAME_MAX,
            "pattern": _NO_NUL_PATTERN,
        },
        "expiresAt": {
            "type": ["string", "null"],
            "format": "date-time",
            "pattern": RFC3339_PATTERN,
            "description": "RFC 3339 with an offset; a real date, in the future (422 otherwise).",
        },
    },
    "required": ["name"],
    "additionalProperties": False,
}

REQUEST_SCHEMAS: Final[dict[str, Schema]] = {
    "CreateDevice": CREATE_DEVICE,
    "UpdateDevice": UPDATE_DEVICE,
    "BlockRequest": BLOCK_REQUEST,
    "TenantSettings": TENANT_SETTINGS,
    "ResetRequest": RESET_REQUEST,
    "CreateToken": CREATE_TOKEN,
    "CrewCheckSettings": CREWCHECK_SETTINGS,
}

_ATTRIBUTES: Schema = {
    "type": "object",
    "properties": {name: _NULLABLE_TEXT for name in ATTRIBUTE_FIELDS},
}

DEVICE: Final[Schema] = {
    "type": "object",
    "properties": {
        "deviceId": {"type": "string"},
        "name": _NULLABLE_TEXT,
        "displayName": {"type": "string"},
        "description": _NULLABLE_TEXT,
        "isEnabled": {"type": "boolean"},
        "isBlocked": {"type": "boolean"},
        "type": {"type": ["string", "null"], "enum": [*sorted(DEVICE_TYPES), None]},
        "settings": {"type": "object"},
        **_ATTRIBUTES["properties"],
        "firstSeenAt": _NULLABLE_TIMESTAMP,
        "lastActiveAt": _NULLABLE_TIMESTAMP,
        "lastDataUploadAt": _NULLABLE_TIMESTAMP,
        "blockedAt": _NULLABLE_TIMESTAMP,
        "blockReason": _NULLABLE_TEXT,
        # null when not blocked; "shadow": the edge forwards and counts (docs/decisions.md)
        "blockMode": {"type": ["string", "null"], "enum": ["enforce", "shadow", None]},
        "lastActivityAt": _NULLABLE_TIMESTAMP,
        # The latest clone-detection conflict (a device back on hardware it had just left).
        "conflictAt": _NULLABLE_TIMESTAMP,
        "createdAt": _TIMESTAMP,
        "updatedAt": _TIMESTAMP,
    },
}
DEVICE["required"] = list(DEVICE["properties"])

RESPONSE_SCHEMAS: Final[dict[str, Schema]] = {
    "Device": DEVICE,
    "DeviceList": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}},
    "DeviceAttributes": _ATTRIBUTES,
    "HistoryRecord": {
        "type": "object",
        "properties": {
            "recordedAt": _TIMESTAMP,
            "changedFields": {"type": "array", "items": {"type": "string"}},
            "previous": {
                "oneOf": [{"$ref": "#/components/schemas/DeviceAttributes"}, {"type": "null"}]
            },
            "current": {"$ref": "#/components/schemas/DeviceAttributes"},
            # Flagged by clone detection: back on the hardware the device had just left.
            "conflict": {"type": "boolean"},
        },
        "required": ["recordedAt", "changedFields", "previous", "current", "conflict"],
    },
    "ConnectResult": {
        "type": "object",
        "properties": {"settings": {"type": "object"}},
        "required": ["settings"],
    },
    "ConnectionReset": {
        "type": "object",
        "properties": {
            "deviceId": {"type": "string"},
            "tenantId": {"type": "string"},
            "apiKey": {"type": "string"},
            "environment": {"type": "string"},
        },
        "required": ["deviceId", "tenantId", "apiKey", "environment"],
    },
    "CreatedToken": {
        "type": "object",
        "properties": {
            "tokenId": {"type": "string", "format": "uuid"},
            "name": {"type": "string"},
            "token": {"type": "string"},
            "createdAt": _TIMESTAMP,
            "expiresAt": _NULLABLE_TIMESTAMP,
        },
        "required": ["tokenId", "name", "token", "createdAt", "expiresAt"],
    },
    "Token": {
        "type": "object",
        "properties": {
            "tokenId": {"type": "string", "format": "uuid"},
            "name": {"type": "string"},
            "prefix": {"type": "string"},
            "createdBy": _NULLABLE_TEXT,
            "createdAt": _TIMESTAMP,
            "expiresAt": _NULLABLE_TIMESTAMP,
            "lastUsedAt": _NULLABLE_TIMESTAMP,
            "revokedAt": _NULLABLE_TIMESTAMP,
        },
        "required": [
            "tokenId",
            "name",
            "prefix",
            "createdBy",
            "createdAt",
            "expiresAt",
            "lastUsedAt",
            "revokedAt",
        ],
    },
    "AuditEntry": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "at": _TIMESTAMP,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "targetType": {"type": "string", "enum": ["device", "token", "tenant", "webhook"]},
            "targetId": {"type": "string"},
            "reason": _NULLABLE_TEXT,
            "details": {"type": "object"},
        },
        "required": ["id", "at", "actor", "action", "targetType", "targetId", "reason", "details"],
    },
    "TenantSettingsResult": {
        "type": "object",
        "properties": {"staleDeviceDays": _STALE_DAYS, "updatedAt": _NULLABLE_TIMESTAMP},
        "required": ["staleDeviceDays", "updatedAt"],
    },
    "StaleReport": {
        "type": "object",
        "properties": {
            "staleDeviceDays": _STALE_DAYS,
            "cutoff": _NULLABLE_TIMESTAMP,
            "count": {"type": "integer", "minimum": 0},
            "deviceIds": {"type": "array", "items": {"type": "string"}},
            "truncated": {"type": "boolean"},
        },
        "required": ["staleDeviceDays", "cutoff", "count", "deviceIds", "truncated"],
    },
    "Problem": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "required": ["type", "title", "status", "detail"],
    },
}
