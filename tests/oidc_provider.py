"""A small OpenID Connect provider for the console's sign-on tests (no tests here).

Discovery document, JWKS, an authorization endpoint that signs in one configured user with a
single "Continue" link, and a token endpoint that enforces what a real provider does: the client's
secret, single-use codes, the same redirect URI, and PKCE S256 (RFC 7636 section 4.6).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "OidcProvider"]

CLIENT_ID = "gatekeeper-console"
CLIENT_SECRET = "console-client-secret-0123456789"
_KID = "test-key-1"


@dataclass
class OidcProvider:
    """Signs in ``subject`` of ``tenant`` with ``scopes``; ``audience`` is the admin API's."""

    tenant: str
    audience: str
    subject: str = "alice@example.com"
    scopes: str = "Device.Read Device.Write Token.Read Token.Write"
    wrong_nonce: bool = False
    issuer: str = ""
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    redeemed: list[str] = field(default_factory=list)
    _key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    _server: TestServer | None = None

    async def start(self, host_name: str = "127.0.0.1") -> None:
        """Serve on loopback; ``host_name`` is how the issuer URL names it ("localhost" makes
        the provider another site than an admin API on 127.0.0.1, as in production)."""
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        self._server = TestServer(app)
        await self._server.start_server()
        self.issuer = f"http://{host_name}:{self._server.port}"

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/jwks"

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": _KID})

    async def _discovery(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.jwks_url,
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, _request: web.Request) -> web.Response:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return web.json_response({"keys": [{**jwk, "kid": _KID, "use": "sig", "alg": "RS256"}]})

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["client_id"] == CLIENT_ID and q["response_type"] == "code"
        assert q["code_challenge_method"] == "S256" and "openid" in q["scope"].split()
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "challenge": q["code_challenge"],
            "redirect_uri": q["redirect_uri"],
            "nonce": "not-yours" if self.wrong_nonce else q["nonce"],
        }
        target = URL(q["redirect_uri"]).update_query(code=code, state=q["state"])
        # A page the user acts on, as a real provider's login or consent page is: the way back
        # is then a navigation started by the provider's site, not a redirect of the console's.
        return web.Response(
            text=f'<!doctype html><title>Sign in</title><a href="{target}">Continue as'
            f" {self.subject}</a>",
            content_type="text/html",
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        pair = base64.b64decode(encoded).decode() if scheme == "Basic" else ""
        if pair != f"{CLIENT_ID}:{CLIENT_SECRET}":
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.codes.pop(str(form.get("code")), None)  # single use
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        if (
            grant is None
            or form.get("redirect_uri") != grant["redirect_uri"]
            or challenge != grant["challenge"]
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.redeemed.append(str(form.get("code")))
        now = int(time.time())
        common = {"iss": self.issuer, "sub": self.subject, "iat": now, "exp": now + 600}
        access = {**common, "aud": self.audience, "tid": self.tenant, "scope": self.scopes}
        identity = {**common, "aud": CLIENT_ID, "nonce": grant["nonce"]}
        return web.json_response(
            {
                "access_token": self._sign(access),
                "id_token": self._sign(identity),
                "token_type": "Bearer",
                "expires_in": 600,
            }
        )
