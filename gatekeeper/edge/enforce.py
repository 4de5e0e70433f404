"""Enforce mode (``auth_mode = "enforce"``): every proxied request carries a valid, unrevoked
device API key or personal access token of its tenant, checked before anything is said about
the device. One Redis read the first time a key is seen, then the in-process key cache."""

from __future__ import annotations

from gatekeeper.domain.edgeview import KeyGrant
from gatekeeper.domain.identity import Identity
from gatekeeper.edge.activity.recorder import ActivityRecorder
from gatekeeper.edge.answers import unauthorized, unavailable
from gatekeeper.edge.http.request import Request
from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.edge.keycache import KeyCache
from gatekeeper.store.clients import REDIS_FAILURES

__all__ = ["CREDENTIAL_HEADERS", "KeyCheck"]

CREDENTIAL_HEADERS = frozenset({b"x-api-key", b"authorization"})
_BEARER = b"bearer "


class KeyCheck:
    """Checks the credential of one request (built once per worker)."""

    __slots__ = ("_keys", "_recorder")

    def __init__(self, keys: KeyCache, recorder: ActivityRecorder) -> None:
        self._keys = keys
        self._recorder = recorder

    async def __call__(
        self, request: Request, conn: ClientConnection, identity: Identity
    ) -> KeyGrant | None:
        """The grant of the presented key, or None after answering 401 (or 503)."""
        if request.repeated and not request.repeated.isdisjoint(CREDENTIAL_HEADERS):
            unauthorized(conn, request, "Send one credential, once.")
            return None
        secret = request.lookup.get(b"x-api-key")
        if secret is None:
            auth = request.lookup.get(b"authorization", b"")
            if auth[:7].lower() == _BEARER:
                secret = auth[7:].strip()
        if not secret:
            unauthorized(conn, request, "An API key or personal access token is required.")
            return None
        digest = self._keys.digest(secret.decode("latin-1"))
        try:
            grant = await self._keys.grant(digest)
        except REDIS_FAILURES:
            unavailable(conn, request, "Keys cannot be checked right now.")
            return None
        device_id = identity.device_id
        if (
            grant is None
            or grant.tenant_id != identity.tenant_id
            or (
                grant.device_id is not None
                and device_id is not None
                and grant.device_id != device_id
            )
        ):
            unauthorized(conn, request, "The key is not valid for this request.")
            return None
        self._recorder.note_key_use(digest)
        return grant
