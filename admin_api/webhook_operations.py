"""The webhook routes' rows of the operations table (issue 14), published by
:mod:`admin_api.openapi` after those of :mod:`admin_api.operations`."""

from __future__ import annotations

from typing import Any, Final

from admin_api.auth import WEBHOOK_READ, WEBHOOK_WRITE
from admin_api.operations import Operation

__all__ = ["WEBHOOK_OPERATIONS", "WEBHOOK_PARAMETERS"]

_BODY_ERRORS: Final = (400, 413, 415, 422)
_LIST = "/api/{tenantId}/webhooks"
_ONE = _LIST + "/{webhookId}"
_ID = ("tenantId", "webhookId")
_LINK = {"Link": 'RFC 8288 link to the next page: `<url>; rel="next"`, absent on the last page'}

WEBHOOK_OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "post",
        _LIST,
        "Create a webhook. The signing `secret` is shown in this answer only; deliveries carry "
        '`Gatekeeper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>`. '
        "Private, loopback and link-local targets are refused (422) unless the server allows them",
        "webhooks",
        WEBHOOK_WRITE,
        ("tenantId",),
        body="CreateWebhook",
        status=201,
        result="CreatedWebhook",
        errors=(*_BODY_ERRORS, 409),
        headers={"Location": "URL of the new webhook"},
    ),
    Operation(
        "get",
        _LIST,
        "List webhooks, newest first (no secrets)",
        "webhooks",
        WEBHOOK_READ,
        ("tenantId", "limit", "cursor"),
        result="WebhookList",
        errors=(400,),
        headers=_LINK,
    ),
    Operation(
        "get",
        _ONE,
        "Read a webhook (no secret)",
        "webhooks",
        WEBHOOK_READ,
        _ID,
        result="Webhook",
        errors=(400, 404),
    ),
    Operation(
        "patch",
        _ONE,
        "Change `enabled`, `events` and/or `description` (fields not given are kept). "
        "`enabled: true` re-enables a webhook disabled after a day of failures",
        "webhooks",
        WEBHOOK_WRITE,
        _ID,
        body="UpdateWebhook",
        result="Webhook",
        errors=(*_BODY_ERRORS, 404),
    ),
    Operation(
        "delete",
        _ONE,
        "Delete a webhook with its deliveries",
        "webhooks",
        WEBHOOK_WRITE,
        _ID,
        status=204,
        errors=(404,),
    ),
    Operation(
        "get",
        _ONE + "/deliveries",
        "Deliveries of a webhook, newest event first, each with its latest attempts",
        "webhooks",
        WEBHOOK_READ,
        (*_ID, "limit", "cursor"),
        result="DeliveryList",
        errors=(400, 404),
        headers=_LINK,
    ),
    Operation(
        "post",
        _ONE + "/test",
        "Send a `webhook.test` event to this webhook (whatever its events); 202 with its id. "
        "409 when the webhook is disabled",
        "webhooks",
        WEBHOOK_WRITE,
        _ID,
        status=202,
        result="WebhookTestEvent",
        errors=(404, 409),
    ),
    Operation(
        "post",
        _ONE + "/secret/reset",
        "Issue a new signing secret, shown in this answer only. With `graceSeconds` the replaced "
        "secret keeps signing that long: deliveries carry two `v1` signatures, the new one "
        "first, so the receiver can switch without refusing any; without, only the new one",
        "webhooks",
        WEBHOOK_WRITE,
        _ID,
        body="ResetRequest",
        body_required=False,
        result="WebhookSecret",
        errors=(*_BODY_ERRORS, 404),
    ),
)

WEBHOOK_PARAMETERS: Final[dict[str, dict[str, Any]]] = {
    "webhookId": {"in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
}
