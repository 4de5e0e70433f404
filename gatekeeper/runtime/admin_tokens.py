"""Admin API bearer tokens for the embedded default: a local signing secret and a minting helper.

``gatekeeper up`` keeps a random HS256 secret in ``<data-dir>/jwt-secret`` so that
``gatekeeper token`` (a separate process) can sign tokens the running admin API accepts, and
notes where that data directory is (``$XDG_STATE_HOME/gatekeeper/last-data-dir``), so ``token``
finds it from any directory. ``token`` never creates a secret: one no admin API knows would
sign tokens that every request then refuses. Production uses an identity provider's JWKS
instead and never calls :func:`mint_token`.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import uuid
from pathlib import Path

import jwt

from gatekeeper.settings import Settings, SettingsError, check_jwt_secret

__all__ = [
    "SECRET_FILE",
    "find_local_secret",
    "load_or_create_local_secret",
    "mint_token",
    "remember_data_dir",
]

SECRET_FILE = "jwt-secret"
_log = logging.getLogger(__name__)


def _pointer() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "gatekeeper" / "last-data-dir"


def remember_data_dir(data_dir: Path) -> None:
    """Note ``data_dir`` (absolute) as the last ``gatekeeper up``'s; best effort."""
    pointer = _pointer()
    try:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(f"{data_dir.resolve()}\n", encoding="utf-8")
    except OSError as exc:
        _log.warning("could not note the data directory in %s (%s)", pointer, exc)


def find_local_secret(data_dir: Path, *, explicit: bool) -> str:
    """The secret of a stack started by ``gatekeeper up``: in ``data_dir``, and unless that was
    given explicitly, in the last ``up``'s data directory. Raises :class:`SettingsError` (the
    command exits 2) when there is none."""
    places = [data_dir]
    if not explicit:
        try:
            places.append(Path(_pointer().read_text(encoding="utf-8").strip()))
        except OSError:
            pass
    for place in places:
        path = place / SECRET_FILE
        try:
            secret = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if secret:
            return secret
    looked = " or ".join(str(place / SECRET_FILE) for place in places)
    raise SettingsError(
        f"no signing secret of a `gatekeeper up` stack in {looked}: start one, give its"
        " --data-dir, or set GATEKEEPER_JWT_SECRET to the admin API's secret"
    )


def load_or_create_local_secret(data_dir: Path) -> str:
    """The secret in ``data_dir/jwt-secret``, created (mode 0600) on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    try:
        # O_EXCL: two processes starting at once agree on the first one's secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="ascii").strip()
        if not secret:
            raise SettingsError(f"{path} is empty; delete it to create a new secret") from None
        return secret
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret + "\n")
    return secret


def mint_token(
    settings: Settings,
    tenant_id: str,
    scopes: list[str],
    subject: str = "cli",
    ttl_seconds: int = 3600,
) -> str:
    """An HS256 admin token for ``tenant_id`` with ``scopes``, signed with the local secret."""
    if not settings.jwt_secret:
        raise SettingsError("jwt_secret is not set; cannot sign an admin token")
    check_jwt_secret(settings.jwt_secret)
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
        settings.tenant_claim: tenant_id,
        "scope": " ".join(scopes),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
