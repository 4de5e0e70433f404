"""Device API keys and personal access tokens: generation, digests, constant-time checks.

A secret is ``<prefix>_<43 url-safe characters>`` (256 bits). Only its digest is stored:
HMAC-SHA-256 with the configured pepper, or plain SHA-256 without one. Look-ups go by digest, so
the secret itself never reaches Postgres, Redis, logs or metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random  # the standard library module

__all__ = [
    "DEVICE_KEY_PREFIX",
    "TOKEN_PREFIX",
    "digest_secret",
    "display_prefix",
    "new_secret",
    "secrets_equal",
]

DEVICE_KEY_PREFIX = "gkd"
TOKEN_PREFIX = "gkp"
_MAX_SECRET_LEN = 256


def new_secret(prefix: str) -> str:
    """A fresh secret to show once to its owner."""
    return f"{prefix}_{_random.token_urlsafe(32)}"


def digest_secret(secret: str, pepper: str | None = None) -> bytes:
    """The digest stored and looked up for ``secret`` (32 bytes)."""
    raw = secret.encode("utf-8", "surrogateescape")[:_MAX_SECRET_LEN]
    if pepper:
        return hmac.new(pepper.encode(), raw, hashlib.sha256).digest()
    return hashlib.sha256(raw).digest()


def display_prefix(secret: str) -> str:
    """The recognisable, non-secret start of a secret (kind and 4 random characters)."""
    return secret[:8]


def secrets_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two digests."""
    return hmac.compare_digest(a, b)
