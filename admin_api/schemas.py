"""JSON Schemas (draft 2020-12) of every request body and every response of the admin API.

Request schemas drive validation (:mod:`admin_api.validation`); all of them are published as
components of the OpenAPI document (:mod:`admin_api.openapi`), so the two never drift.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "BLOCK_REQUEST",
    "CREATE_DEVICE",
    "CREATE_TOKEN",
    "DEVICE_ID_PATTERN",
    "DEVICE_TYPES",
    "REQUEST_SCHEMAS",
    "RESET_REQUEST",
    "RESPONSE_SCHEMAS",
    "UPDATE_DEVICE",
]

Schema = dict[str, Any]

# The edge's rule for device ids: 1-128 printable ASCII characters, no spaces.
DEVICE_ID_PATTERN: Final = r"^[\x21-\x7e]{1,128}$"
NAME_MAX: Final = 200
DESCRIPTION_MAX: Final = 2000
REASON_MAX: Final = 500
URL_MAX: Final = 2048
GRACE_MAX_SECONDS: Final = 7 * 24 * 3600

_NAME: Schema = {"type": ["string", "null"], "minLength": 1, "maxLength": NAME_MAX}
_DESCRIPTION: Schema = {"type": ["string", "null"], "maxLength": DESCRIPTION_MAX}
_TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
_NULLABLE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_TEXT: Schema = {"type": ["string", "null"]}

CREWCHECK_SETTINGS: Final[Schema] = {
    "type": "object",
    "properties": {
        "logoUrl": {"type": "string", "maxLength": URL_MAX, "pattern": r"^[hH][tT][tT][pP][sS]?://\S+$",
                    "description": "An http or https URL of the logo the device shows."},
    },
    "required": ["logoUrl"],
    "additionalProperties": False,
}

# Settings schema per device type; a new type is one entry here.
DEVICE_TYPES: Final[dict[str, Schema]] = {"CrewCheck": CREWCHECK_SETTINGS}

CREATE_DEVICE: Final[Schema] = {
    "type": "object",
    "properties": {
        "deviceId": {"type": "string", "pattern": DEVICE_ID_PATTERN,
                     "description": "Optional; generated (a UUID) when absent."},
        "type": {"type": "string", "enum": sorted(DEVICE_TYPES)},
        "name": _NAME,
        "description": _DESCRIPTION,
        "settings": {"type": "object", "description": "Per type; CrewCheck: {logoUrl}."},
    },
    "required": ["type", "settings"],
    "additionalProperties": False,
}

UPDATE_DEVICE: Final[Schema] = {
    "type": "object",
    "properties": {"name": _NAME, "description": _DESCRIPTION, "isEnabled": {"type": "boolean"}},
    "minProperties": 1,
    "additionalProperties": False,
}

BLOCK_REQUEST: Final[Schema] = {
    "type": "object",
    "properties": {"reason": {"type": ["string", "null"], "maxLength": REASON_MAX}},
    "additionalProperties": False,
}

RESET_REQUEST: Final[Schema] = {
    "type": "object",
    "properties": {"graceSeconds": {"type": "number", "minimum": 0,
                                    "maximum": GRACE_MAX_SECONDS, "default": 0}},
    "additionalProperties": False,
}

CREATE_TOKEN: Final[Schema] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
        "expiresAt": {**_NULLABLE_TIMESTAMP, "description": "RFC 3339 with offset, future."},
    },
    "required": ["name"],
    "additionalProperties": False,
}

REQUEST_SCHEMAS: Final[dict[str, Schema]] = {
    "CreateDevice": CREATE_DEVICE,
    "UpdateDevice": UPDATE_DEVICE,
    "BlockRequest": BLOCK_REQUEST,
    "ResetRequest": RESET_REQUEST,
    "CreateToken": CREATE_TOKEN,
    "CrewCheckSettings": CREWCHECK_SETTINGS,
}

_ATTRIBUTES: Schema = {
    "type": "object",
    "properties": {name: _NULLABLE_TEXT for name in (
        "application", "applicationVersion", "os", "osVersion", "manufacturer", "model")},
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
        "lastActivityAt": _NULLABLE_TIMESTAMP,
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
            "previous": {"oneOf": [{"$ref": "#/components/schemas/DeviceAttributes"},
                                   {"type": "null"}]},
            "current": {"$ref": "#/components/schemas/DeviceAttributes"},
        },
        "required": ["recordedAt", "changedFields", "previous", "current"],
    },
    "ConnectResult": {"type": "object", "properties": {"settings": {"type": "object"}},
                      "required": ["settings"]},
    "ConnectionReset": {
        "type": "object",
        "properties": {"deviceId": {"type": "string"}, "tenantId": {"type": "string"},
                       "apiKey": {"type": "string"}, "environment": {"type": "string"}},
        "required": ["deviceId", "tenantId", "apiKey", "environment"],
    },
    "CreatedToken": {
        "type": "object",
        "properties": {"tokenId": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                       "token": {"type": "string"}, "createdAt": _TIMESTAMP,
                       "expiresAt": _NULLABLE_TIMESTAMP},
        "required": ["tokenId", "name", "token", "createdAt", "expiresAt"],
    },
    "Token": {
        "type": "object",
        "properties": {"tokenId": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                       "prefix": {"type": "string"}, "createdBy": _NULLABLE_TEXT,
                       "createdAt": _TIMESTAMP, "expiresAt": _NULLABLE_TIMESTAMP,
                       "lastUsedAt": _NULLABLE_TIMESTAMP, "revokedAt": _NULLABLE_TIMESTAMP},
        "required": ["tokenId", "name", "prefix", "createdBy", "createdAt", "expiresAt",
                     "lastUsedAt", "revokedAt"],
    },
    "AuditEntry": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "at": _TIMESTAMP, "actor": {"type": "string"},
                       "action": {"type": "string"},
                       "targetType": {"type": "string", "enum": ["device", "token"]},
                       "targetId": {"type": "string"}, "reason": _NULLABLE_TEXT,
                       "details": {"type": "object"}},
        "required": ["id", "at", "actor", "action", "targetType", "targetId", "reason",
                     "details"],
    },
    "Problem": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
            "status": {"type": "integer"}, "detail": {"type": "string"},
            "errors": {"type": "array", "items": {
                "type": "object", "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
        },
        "required": ["type", "title", "status", "detail"],
    },
}
