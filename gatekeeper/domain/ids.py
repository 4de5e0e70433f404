"""The two id rules of the product, defined once: what a device id and a tenant id may be.

Everything that checks an id (the edge, the admin API and its OpenAPI document, the settings)
uses these; a test holds the patterns and the functions equal.
"""

from __future__ import annotations

import re

__all__ = [
    "DEVICE_ID_PATTERN",
    "MAX_DEVICE_ID_LEN",
    "TENANT_ID_PATTERN",
    "TENANT_ID_RULE",
    "valid_device_id",
    "valid_tenant_id",
]

MAX_DEVICE_ID_LEN = 128

# The two id rules as regular expressions that mean the same in Python and in ECMA-262, so the
# admin API's OpenAPI document states exactly the rule the edge applies (a test holds them equal).
DEVICE_ID_PATTERN = rf"^[\x21-\x7e]{{1,{MAX_DEVICE_ID_LEN}}}$"
"""1-128 printable ASCII characters, no space: what :func:`valid_device_id` accepts."""
# Lower-case only: an upstream that routes case-insensitively must not read /api/ACME/ as the
# tenant "acme" while the edge checked a tenant "ACME" with no blocks (docs/decisions.md).
# Starting and ending with a letter or digit: Windows-hosted upstreams may drop a trailing dot
# from a path segment and read /api/acme./ as tenant "acme" (docs/decisions.md).
TENANT_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9._~-]{0,62}[a-z0-9])?$"
"""What :func:`valid_tenant_id` accepts."""
TENANT_ID_RULE = (
    "the tenant id must be 1-64 characters of a-z 0-9 . _ ~ -, starting and ending with a-z 0-9"
)
_TENANT_RE = re.compile(TENANT_ID_PATTERN)


def valid_device_id(value: str) -> bool:
    """1-128 printable ASCII characters, no space (:data:`DEVICE_ID_PATTERN`, without a regex)."""
    return (
        0 < len(value) <= MAX_DEVICE_ID_LEN
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def valid_tenant_id(value: str) -> bool:
    return _TENANT_RE.fullmatch(value) is not None
