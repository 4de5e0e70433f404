"""Console single sign-on: OpenID Connect authorization code flow with PKCE (RFC 7636).

``/console/oidc/start`` sends the browser to the provider with a fresh ``state``, ``nonce`` and
S256 code challenge, kept in Redis (ten minutes, single use) and bound to this browser by a
cookie; ``/console/oidc/callback`` checks the state against that cookie, redeems the code with
the verifier, checks the ID token (signature, issuer, audience, nonce), and then signs in with
the access token exactly as a pasted token is: the admin API's own verifier decides.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote_plus

import aiohttp
import jwt
from aiohttp import web
from yarl import URL

from admin_api.auth import VERIFIER
from admin_api.console.access import SESSIONS, forbidden, signed_out
from admin_api.console.render import console_path, render
from admin_api.console.session import same_origin, set_cookie
from admin_api.errors import Problem
from gatekeeper.settings import Settings
from gatekeeper.store.clients import RedisClient

__all__ = ["OIDC", "OidcClient", "oidc_callback", "oidc_start"]

_FLOW_COOKIE: Final = "gatekeeper_console_oidc"
_FLOW_PATH: Final = "/console/oidc/"
_FLOW_KEY: Final = "gatekeeper:console:oidc:"
_FLOW_SECONDS: Final = 600
_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)
_FAILED: Final = "Single sign-on failed"


@dataclass(frozen=True, slots=True)
class Provider:
    """What the discovery document says (OpenID Connect Discovery 1.0 section 3)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks: jwt.PyJWKClient


class SignOnError(Exception):
    """The flow cannot go on; the message is shown on the sign-in page."""


class OidcClient:
    """The console's OIDC relying party; the discovery document is fetched once, lazily."""

    def __init__(self, settings: Settings, redis: RedisClient) -> None:
        assert settings.oidc_issuer is not None and settings.oidc_client_id is not None
        self._issuer = settings.oidc_issuer.rstrip("/")
        self._client_id = settings.oidc_client_id
        self._secret = settings.oidc_client_secret
        self._scope = settings.oidc_scope
        self._redis = redis
        self._provider: Provider | None = None

    async def _discover(self) -> Provider:
        if self._provider is not None:
            return self._provider
        url = self._issuer + "/.well-known/openid-configuration"
        try:
            async with (
                aiohttp.ClientSession(timeout=_TIMEOUT) as http,
                http.get(url) as response,
            ):
                response.raise_for_status()
                document: dict[str, Any] = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SignOnError("the identity provider cannot be reached") from exc
        if document.get("issuer", "").rstrip("/") != self._issuer:
            raise SignOnError("the identity provider names another issuer")
        self._provider = Provider(
            issuer=document["issuer"],
            authorization_endpoint=document["authorization_endpoint"],
            token_endpoint=document["token_endpoint"],
            jwks=jwt.PyJWKClient(document["jwks_uri"], cache_keys=True, lifespan=300, timeout=5),
        )
        return self._provider

    async def authorization_url(self, redirect_uri: str) -> tuple[str, str]:
        """Where to send the browser, and the ``state`` to bind to it."""
        provider = await self._discover()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        flow = {"verifier": verifier, "nonce": nonce, "redirectUri": redirect_uri}
        await self._redis.set(_flow_key(state), json.dumps(flow), ex=_FLOW_SECONDS)
        query = {
            "response_type": "code",
            "client_id": self._client_id,
            "redirect_uri": redirect_uri,
            "scope": self._scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
        }
        return str(URL(provider.authorization_endpoint).update_query(query)), state

    async def redeem(self, state: str, code: str) -> str:
        """The access token for ``code``, once the flow of ``state`` and its ID token check."""
        raw = await self._redis.getdel(_flow_key(state))  # single use
        if raw is None:
            raise SignOnError("the sign-in took too long or was already used; start again")
        flow = json.loads(raw)
        provider = await self._discover()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow["redirectUri"],
            "client_id": self._client_id,
            "code_verifier": flow["verifier"],
        }
        headers = {}
        if self._secret:
            # client_secret_basic, each part form-encoded first (RFC 6749 section 2.3.1).
            pair = f"{quote_plus(self._client_id)}:{quote_plus(self._secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            async with (
                aiohttp.ClientSession(timeout=_TIMEOUT) as http,
                http.post(provider.token_endpoint, data=form, headers=headers) as response,
            ):
                tokens: dict[str, Any] = await response.json(content_type=None)
                if response.status != 200:
                    raise SignOnError(f"the code was refused ({tokens.get('error', 'error')})")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SignOnError("the identity provider cannot be reached") from exc
        await self._check_id_token(provider, tokens.get("id_token"), flow["nonce"])
        access_token = tokens.get("access_token")
        if not isinstance(access_token, str):
            raise SignOnError("the identity provider sent no access token")
        return access_token

    async def _check_id_token(self, provider: Provider, id_token: Any, nonce: str) -> None:
        if not isinstance(id_token, str):
            raise SignOnError("the identity provider sent no ID token")
        try:
            # PyJWKClient is synchronous (urllib); keep the event loop free while it fetches.
            key = await asyncio.to_thread(provider.jwks.get_signing_key_from_jwt, id_token)
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"],
                audience=self._client_id,
                issuer=provider.issuer,
                leeway=30,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise SignOnError("the ID token is not valid") from exc
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignOnError("the ID token belongs to another sign-in")


def _flow_key(state: str) -> str:
    return _FLOW_KEY + hashlib.sha256(state.encode()).hexdigest()


def _redirect_uri(request: web.Request) -> str:
    return str(request.url.origin()) + _FLOW_PATH + "callback"


OIDC = web.AppKey("console_oidc", OidcClient)


async def oidc_start(request: web.Request) -> web.Response:
    """A link, not a form: the CSP's ``form-action 'self'`` stops a form from being redirected
    to the provider. Refused when another site links here (``Sec-Fetch-Site``)."""
    if not same_origin(request):
        return forbidden(request, None, "The form was sent from another site.")
    try:
        location, state = await request.app[OIDC].authorization_url(_redirect_uri(request))
    except SignOnError as exc:
        return signed_out(request, f"{_FAILED}: {exc}", status=502)
    response = web.Response(status=303, headers={"Location": location})
    # Lax, not Strict: the provider's redirect back is a cross-site navigation, and this cookie
    # must come with it to prove the callback belongs to the browser that started the flow.
    response.set_cookie(
        _FLOW_COOKIE,
        state,
        max_age=_FLOW_SECONDS,
        path=_FLOW_PATH,
        httponly=True,
        samesite="Lax",
        secure=request.secure,
    )
    return response


async def oidc_callback(request: web.Request) -> web.Response:
    query = request.query
    if "error" in query:
        reason = query.get("error_description") or query["error"]
        return _failed(request, f"the identity provider said: {reason[:200]}", 401)
    state, code = query.get("state", ""), query.get("code", "")
    bound = request.cookies.get(_FLOW_COOKIE, "")
    if not state or not code or not hmac.compare_digest(state.encode(), bound.encode()):
        return _failed(request, "this sign-in was not started in this browser", 403)
    try:
        token = await request.app[OIDC].redeem(state, code)
    except SignOnError as exc:
        return _failed(request, str(exc), 401)
    verifier = request.app[VERIFIER]
    try:
        claims = await verifier.verify(token)
        principal = verifier.principal(claims)
    except Problem as exc:
        return _failed(request, f"the admin API refused the token: {exc.detail}", exc.status)
    if int(claims["exp"]) <= time.time():
        return _failed(request, "the token has expired", 401)
    session = await request.app[SESSIONS].create(
        token, principal.tenant_id, principal.subject, int(claims["exp"])
    )
    # A page, not a redirect: the browser arrived here from the provider's site, and it would
    # not send the SameSite=Strict session cookie along a redirect of that same navigation.
    target = console_path(session.tenant, "devices")
    response = render(request, "signed-in.html", {"session": None, "target": target})
    set_cookie(response, request, session)
    response.del_cookie(_FLOW_COOKIE, path=_FLOW_PATH)
    return response


def _failed(request: web.Request, message: str, status: int) -> web.Response:
    response = signed_out(request, f"{_FAILED}: {message}", status=status)
    response.del_cookie(_FLOW_COOKIE, path=_FLOW_PATH)
    return response
