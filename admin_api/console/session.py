"""Console sessions: a random id in a cookie, everything else in Redis.

The browser holds only an opaque id (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over TLS);
Redis holds the access token the admin signed in with, its tenant, a CSRF secret and one-shot
messages for the next page (a new key or token secret, an error). Redis, which every admin
replica already shares, lets a session survive a restart and work across replicas. The Redis key
is a digest of the cookie value, so a copy of Redis alone cannot be replayed as a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from gatekeeper.store.clients import RedisClient

__all__ = [
    "COOKIE",
    "Session",
    "SessionStore",
    "check_csrf",
    "clear_cookie",
    "same_origin",
    "set_cookie",
]

COOKIE: Final = "gatekeeper_console"
_KEY_PREFIX: Final = "gatekeeper:console:session:"
_FLASH_SUFFIX: Final = ":flash"
# Flash messages live until the next page shows them; a minute is plenty for a redirect.
_FLASH_SECONDS: Final = 60
_ID_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in browser: the admin's access token (sent to the API on every call), its
    tenant and subject (shown on every page), the CSRF secret and when the token expires."""

    session_id: str
    token: str
    tenant: str
    subject: str
    csrf: str
    expires_at: int

    def __repr__(self) -> str:
        return f"Session(tenant={self.tenant!r}, subject={self.subject!r}, token=***)"


def _key(session_id: str) -> str:
    return _KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Sessions in Redis, expiring with the token they hold."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def create(self, token: str, tenant: str, subject: str, expires_at: int) -> Session:
        session = Session(
            session_id=secrets.token_urlsafe(_ID_BYTES),
            token=token,
            tenant=tenant,
            subject=subject,
            csrf=secrets.token_urlsafe(_ID_BYTES),
            expires_at=expires_at,
        )
        data = {
            "token": token,
            "tenant": tenant,
            "subject": subject,
            "csrf": session.csrf,
            "expiresAt": expires_at,
        }
        await self._redis.set(_key(session.session_id), json.dumps(data), exat=expires_at)
        return session

    async def load(self, session_id: str | None) -> Session | None:
        """The live session of that cookie value, or None (unknown, expired or malformed)."""
        if not session_id or len(session_id) > 128:
            return None
        raw = await self._redis.get(_key(session_id))
        if raw is None:
            return None
        data: dict[str, Any] = json.loads(raw)
        if int(data["expiresAt"]) <= time.time():
            return None
        return Session(
            session_id=session_id,
            token=data["token"],
            tenant=data["tenant"],
            subject=data["subject"],
            csrf=data["csrf"],
            expires_at=int(data["expiresAt"]),
        )

    async def delete(self, session: Session) -> None:
        key = _key(session.session_id)
        await self._redis.delete(key, key + _FLASH_SUFFIX)

    async def flash(self, session: Session, message: dict[str, Any]) -> None:
        """Keep ``message`` for the next page this session loads (redirect-after-post)."""
        key = _key(session.session_id) + _FLASH_SUFFIX
        await self._redis.set(key, json.dumps(message), ex=_FLASH_SECONDS)

    async def take_flash(self, session: Session) -> dict[str, Any] | None:
        """The pending message, removed as it is read: a secret is shown exactly once."""
        raw = await self._redis.getdel(_key(session.session_id) + _FLASH_SUFFIX)
        if raw is None:
            return None
        message: dict[str, Any] = json.loads(raw)
        return message


def set_cookie(response: web.StreamResponse, request: web.Request, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        session.session_id,
        max_age=max(0, session.expires_at - int(time.time())),
        path="/console/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(
        COOKIE, path="/console/", httponly=True, samesite="Strict", secure=request.secure
    )


def same_origin(request: web.Request) -> bool:
    """False when the browser says a POST comes from another site.

    The session cookie is ``SameSite=Strict`` and forms carry a CSRF token, but the sign-in form
    has no session yet: without this, another site could sign a victim into the attacker's
    tenant (login CSRF). Browsers send ``Origin`` and ``Sec-Fetch-Site`` on every POST; clients
    that send neither (curl) are not browsers and cannot be tricked into a request."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    # The host only: behind a TLS-terminating proxy the scheme this process sees is not the
    # browser's.
    return origin.partition("://")[2] == request.host


def check_csrf(session: Session, submitted: str | None) -> bool:
    """The synchronizer token: the form's ``csrf`` field must equal the session's secret."""
    return submitted is not None and hmac.compare_digest(submitted.encode(), session.csrf.encode())
