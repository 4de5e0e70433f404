"""Webhook signing and the target guard (issue 14), for the routes and the dispatcher to share.

``Gatekeeper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256(secret, "<t>.<raw body>")>``, as
``shared/DESIGN.md`` ("Events out") says. A target must be http(s), and unless private targets
are allowed every address its host resolves to must be public: checked when a webhook is
created and again before each delivery, so a name that later resolves to a private address
(DNS rebinding) is refused then too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "SIGNATURE_HEADER",
    "TargetRefused",
    "check_target",
    "is_public_address",
    "new_secret",
    "sign",
    "verify",
]

SIGNATURE_HEADER: Final = "Gatekeeper-Signature"
_SECRET_PREFIX: Final = "whsec_"


class TargetRefused(ValueError):
    """The URL may not be delivered to; the message says why (no secret in it)."""


def new_secret() -> str:
    return _SECRET_PREFIX + secrets.token_urlsafe(32)


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int, previous: str | None = None) -> str:
    """The header's value for ``body`` sent at ``timestamp``. While a reset secret's grace
    period runs, ``previous`` signs too: a second ``v1``, after the new one, so a receiver that
    reads the last ``v1`` still verifies with the old secret until it switches."""
    header = f"t={timestamp},v1={_mac(secret, body, timestamp)}"
    if previous is not None:
        header += f",v1={_mac(previous, body, timestamp)}"
    return header


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute, compare in constant time with every ``v1`` given."""
    timestamp: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    try:
        expected = _mac(secret, body, int(timestamp or "")).encode()
    except ValueError:
        return False
    return any(hmac.compare_digest(expected, s.encode()) for s in signatures)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_target(url: str, *, allow_private: bool) -> None:
    """Raise :class:`TargetRefused` unless ``url`` may be delivered to now."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("url must be an http or https URL with a host")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except OSError as exc:
        raise TargetRefused(f"the host does not resolve: {exc.strerror or exc}") from exc
    addresses = {str(info[4][0]) for info in infos}
    if not addresses or not all(_public(a) for a in addresses):
        raise TargetRefused("the host resolves to a private, loopback or link-local address")


def is_public_address(address: str) -> bool:
    """Whether a resolved address may be delivered to when private targets are not allowed
    (the dispatcher's resolver applies it at connect time too)."""
    return _public(address)
