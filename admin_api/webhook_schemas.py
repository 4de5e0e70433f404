"""JSON Schemas (draft 2020-12) of the webhook routes' bodies and answers (issue 14), published
in the OpenAPI document beside those of :mod:`admin_api.schemas`, and used to validate the
request bodies (:mod:`admin_api.webhooks`).

What a schema cannot say is checked by the server and answered with the documented 422: a
target that resolves to a private, loopback or link-local address (unless
``webhook_allow_private_targets``), a port beyond 65535.
"""

from __future__ import annotations

from typing import Any, Final

from admin_api.schemas import DESCRIPTION_MAX, HTTP_URL_PATTERN, URL_MAX
from gatekeeper.store.outbox import EVENT_TYPES

__all__ = [
    "CREATE_WEBHOOK",
    "UPDATE_WEBHOOK",
    "WEBHOOK_REQUEST_SCHEMAS",
    "WEBHOOK_RESPONSE_SCHEMAS",
]

Schema = dict[str, Any]

_TIMESTAMP: Final[Schema] = {"type": "string", "format": "date-time"}
_NULLABLE_TIMESTAMP: Final[Schema] = {"type": ["string", "null"], "format": "date-time"}

_URL: Final[Schema] = {
    "type": "string",
    "maxLength": URL_MAX,
    "pattern": HTTP_URL_PATTERN,
    "description": "An http or https URL with a host and no user info. Unless the server allows "
    "private targets, every address the host resolves to must be public (422 otherwise).",
}
_EVENTS: Final[Schema] = {
    "type": "array",
    "items": {"type": "string", "enum": list(EVENT_TYPES)},
    "minItems": 1,
    "maxItems": len(EVENT_TYPES),
    "uniqueItems": True,
    "description": "The event types to deliver (at least one, none twice).",
}
_DESCRIPTION: Final[Schema] = {
    "type": ["string", "null"],
    "maxLength": DESCRIPTION_MAX,
    "pattern": r"^[^\x00]*$",
}

CREATE_WEBHOOK: Final[Schema] = {
    "type": "object",
    "properties": {"url": _URL, "events": _EVENTS, "description": _DESCRIPTION},
    "required": ["url", "events"],
    "additionalProperties": False,
}

UPDATE_WEBHOOK: Final[Schema] = {
    "type": "object",
    "properties": {
        "enabled": {
            "type": "boolean",
            "description": "true re-enables (clearing disabledAt and failingSince, as after a "
            "day of failures); false pauses deliveries.",
        },
        "events": _EVENTS,
        "description": _DESCRIPTION,
    },
    "minProperties": 1,
    "additionalProperties": False,
}

WEBHOOK_REQUEST_SCHEMAS: Final[dict[str, Schema]] = {
    "CreateWebhook": CREATE_WEBHOOK,
    "UpdateWebhook": UPDATE_WEBHOOK,
}

_WEBHOOK_PROPERTIES: Final[Schema] = {
    "webhookId": {"type": "string", "format": "uuid"},
    "url": {"type": "string"},
    "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
    "description": {"type": ["string", "null"]},
    "enabled": {"type": "boolean"},
    "disabledAt": _NULLABLE_TIMESTAMP,
    # The first failure of the current run of failures; a day of them disables the webhook.
    "failingSince": _NULLABLE_TIMESTAMP,
    "createdAt": _TIMESTAMP,
}

_ATTEMPT: Final[Schema] = {
    "type": "object",
    "properties": {
        "attemptedAt": _TIMESTAMP,
        "status": {
            "type": ["integer", "null"],
            "description": "The receiver's HTTP status; null when none came (see error)",
        },
        "durationMs": {"type": "number"},
        "error": {"type": ["string", "null"]},
    },
    "required": ["attemptedAt", "status", "durationMs", "error"],
}

_DELIVERY: Final[Schema] = {
    "type": "object",
    "properties": {
        "deliveryId": {"type": "integer"},
        "eventId": {"type": "string", "format": "uuid"},
        "type": {"type": ["string", "null"]},
        "deviceId": {"type": ["string", "null"]},
        "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "integer", "minimum": 0},
        "nextAttemptAt": {**_NULLABLE_TIMESTAMP, "description": "null unless pending"},
        "createdAt": _TIMESTAMP,
        "finishedAt": _NULLABLE_TIMESTAMP,
        "attemptLog": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/DeliveryAttempt"},
            "description": "The latest attempts (at most 10), oldest first",
        },
    },
    "required": [
        "deliveryId",
        "eventId",
        "type",
        "deviceId",
        "state",
        "attempts",
        "nextAttemptAt",
        "createdAt",
        "finishedAt",
        "attemptLog",
    ],
}

WEBHOOK_RESPONSE_SCHEMAS: Final[dict[str, Schema]] = {
    "Webhook": {
        "type": "object",
        "properties": _WEBHOOK_PROPERTIES,
        "required": list(_WEBHOOK_PROPERTIES),
    },
    "CreatedWebhook": {
        "type": "object",
        "properties": {
            **_WEBHOOK_PROPERTIES,
            "secret": {
                "type": "string",
                "description": "The signing secret: shown in this answer only",
            },
        },
        "required": [*_WEBHOOK_PROPERTIES, "secret"],
    },
    "WebhookList": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}},
    "DeliveryAttempt": _ATTEMPT,
    "Delivery": _DELIVERY,
    "DeliveryList": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}},
    "WebhookSecret": {
        "type": "object",
        "properties": {
            "webhookId": {"type": "string", "format": "uuid"},
            "secret": {
                "type": "string",
                "description": "The new signing secret: shown in this answer only",
            },
            "previousSecretExpiresAt": {
                **_NULLABLE_TIMESTAMP,
                "description": "Until when the replaced secret signs too (null: it stopped now)",
            },
        },
        "required": ["webhookId", "secret", "previousSecretExpiresAt"],
    },
    "WebhookTestEvent": {
        "type": "object",
        "properties": {"eventId": {"type": "string", "format": "uuid"}},
        "required": ["eventId"],
    },
}
