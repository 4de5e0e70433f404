"""The admin API's OAuth2 scopes, defined once.

The admin API checks them (:mod:`admin_api.auth`); the ``gatekeeper`` command mints local tokens
with all of them (``gatekeeper token``, ``gatekeeper up``'s console link). Both layers may import
the domain, and this module imports nothing, so ``gatekeeper --help`` stays free of PyJWT.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADMIN_SCOPES",
    "DEVICE_READ",
    "DEVICE_WRITE",
    "TOKEN_READ",
    "TOKEN_WRITE",
    "WEBHOOK_READ",
    "WEBHOOK_WRITE",
]

DEVICE_READ: Final = "Device.Read"
DEVICE_WRITE: Final = "Device.Write"
TOKEN_READ: Final = "Token.Read"
TOKEN_WRITE: Final = "Token.Write"
WEBHOOK_READ: Final = "Webhook.Read"
WEBHOOK_WRITE: Final = "Webhook.Write"
# Every scope, in the order the documentation lists them.
ADMIN_SCOPES: Final = (
    DEVICE_READ,
    DEVICE_WRITE,
    TOKEN_READ,
    TOKEN_WRITE,
    WEBHOOK_READ,
    WEBHOOK_WRITE,
)
