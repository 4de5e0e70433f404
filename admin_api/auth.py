"""Bearer JWT authentication and scope checks for the admin API.

Tokens are verified for signature, ``exp``, ``iss`` and ``aud``; keys come from a JWKS URL
(asymmetric algorithms only, cached, refreshed on an unknown ``kid``) and/or a local HS256
secret (the embedded default). The algorithm family picks the key source, so a token can never
get an HMAC check against a public key.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

import jwt
from aiohttp import web

from admin_api.errors import Problem
from gatekeeper.domain.scopes import (
    ADMIN_SCOPES,
    DEVICE_READ,
    DEVICE_WRITE,
    TOKEN_READ,
    TOKEN_WRITE,
    WEBHOOK_READ,
    WEBHOOK_WRITE,
)
from gatekeeper.settings import Settings

__all__ = [
    "DEVICE_READ",
    "DEVICE_WRITE",
    "SCOPES",
    "TOKEN_READ",
    "TOKEN_WRITE",
    "VERIFIER",
    "WEBHOOK_READ",
    "WEBHOOK_WRITE",
    "Principal",
    "TokenVerifier",
    "authorize",
]

_log = logging.getLogger(__name__)

SCOPES: Final = ADMIN_SCOPES

_HMAC_ALGORITHMS: Final = ["HS256", "HS384", "HS512"]
_JWKS_ALGORITHMS: Final = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
_LEEWAY_SECONDS: Final = 30
# A token with an unknown kid refetches the JWKS at most this often, so forged kids cannot turn
# the admin API into a load generator against the identity provider.
JWKS_REFRESH_COOLDOWN_SECONDS: Final = 10.0
_MAX_TOKEN_LENGTH: Final = 16_384


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject (the audit actor), its tenant and its scopes."""

    subject: str
    tenant_id: str
    scopes: frozenset[str]


def _unauthorized(detail: str, *, invalid: bool = True) -> Problem:
    challenge = 'Bearer realm="gatekeeper-admin"'
    if invalid:
        challenge += ', error="invalid_token"'
    return Problem(401, detail, type_="unauthorized", headers={"WWW-Authenticate": challenge})


class TokenVerifier:
    """Verifies admin bearer tokens against the configured key sources."""

    def __init__(
        self, settings: Settings, *, jwks_cooldown: float = JWKS_REFRESH_COOLDOWN_SECONDS
    ) -> None:
        self._secret = settings.jwt_secret
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._tenant_claim = settings.tenant_claim
        self._jwks: jwt.PyJWKClient | None = None
        if settings.jwks_url:
            self._jwks = jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=300,
                timeout=5,
                cooldown_duration=jwks_cooldown,
            )
        if self._secret is None and self._jwks is None:
            _log.warning("neither jwt_secret nor jwks_url is set: every admin token is refused")

    def __repr__(self) -> str:
        secret = "***" if self._secret else None
        return f"TokenVerifier(jwks={self._jwks is not None}, secret={secret})"

    async def _key_for(self, token: str, algorithm: str) -> Any:
        if algorithm in _HMAC_ALGORITHMS and self._secret:
            return self._secret
        if algorithm in _JWKS_ALGORITHMS and self._jwks is not None:
            jwks = self._jwks
            try:
                # PyJWKClient is synchronous (urllib); keep the event loop free while it fetches.
                signing_key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientConnectionError as exc:
                _log.warning("JWKS unreachable: %s", exc)
                raise Problem(
                    503, "The identity provider's keys cannot be fetched", type_="jwks-unavailable"
                ) from exc
            except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
                raise _unauthorized("The token's signing key is unknown") from exc
            return signing_key.key
        raise _unauthorized("The token's algorithm is not accepted")

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raises a 401 :class:`Problem` for any invalid token."""
        if len(token) > _MAX_TOKEN_LENGTH:
            raise _unauthorized("The token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("The token is malformed") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise _unauthorized("The token names no algorithm")
        key = await self._key_for(token, algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("The token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"The token is not valid: {_safe_reason(exc)}") from exc
        return claims

    def principal(self, claims: dict[str, Any]) -> Principal:
        tenant = claims.get(self._tenant_claim)
        subject = claims.get("sub")
        if not isinstance(tenant, str) or not isinstance(subject, str) or not subject:
            raise _unauthorized(f"The token lacks a '{self._tenant_claim}' or 'sub' claim")
        return Principal(subject[:256], tenant, _scopes(claims))


def _safe_reason(exc: jwt.InvalidTokenError) -> str:
    # PyJWT's messages name claims, never token contents; cap them anyway.
    return str(exc)[:200] or type(exc).__name__


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        found.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        found.update(scp.split())
    elif isinstance(scp, list):
        found.update(s for s in scp if isinstance(s, str))
    return frozenset(found)


VERIFIER = web.AppKey("verifier", TokenVerifier)


async def authorize(request: web.Request, scope: str) -> Principal:
    """Authenticate the request and require its token to be of the path's tenant with ``scope``.

    Call first in every JWT-guarded handler: 401 without a valid token, 403 for another tenant
    or a missing scope."""
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise _unauthorized("A bearer token is required", invalid=bool(header))
    verifier = request.app[VERIFIER]
    principal = verifier.principal(await verifier.verify(token.strip()))
    if principal.tenant_id != request.match_info["tenantId"]:
        raise Problem(403, "The token is not valid for this tenant", type_="wrong-tenant")
    if scope not in principal.scopes:
        raise Problem(
            403,
            f"The token lacks the scope {scope}",
            type_="insufficient-scope",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )
    return principal
