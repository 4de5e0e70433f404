"""Where the admin CLI finds the admin API: its URL, the tenant, the bearer token and, for
https, the CA to trust; and the flags that name them.

Each value comes from its flag, else its ``GATEKEEPER_ADMIN_*`` environment variable, else the
small TOML file :func:`config_path` names (``$XDG_CONFIG_HOME/gatekeeper/admin.toml``, as ``gh``
keeps ``~/.config/gh``), else a default (the URL only). These are a client's settings, not the
server's: :class:`gatekeeper.settings.Settings` never sees them, and the environment arrives
here as a mapping the command's entry point passes in.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from yarl import URL

__all__ = [
    "DEFAULT_URL",
    "ENV_CA_FILE",
    "ENV_CONFIG",
    "ENV_TENANT",
    "ENV_TOKEN",
    "ENV_URL",
    "AdminConfigError",
    "AdminTarget",
    "config_path",
    "connection_flags",
    "resolve_target",
]

ENV_URL: Final = "GATEKEEPER_ADMIN_URL"
ENV_TENANT: Final = "GATEKEEPER_ADMIN_TENANT"
ENV_TOKEN: Final = "GATEKEEPER_ADMIN_TOKEN"
ENV_CONFIG: Final = "GATEKEEPER_ADMIN_CONFIG"
ENV_CA_FILE: Final = "GATEKEEPER_ADMIN_CA_FILE"
# The admin API of `gatekeeper up` on its default port.
DEFAULT_URL: Final = "http://127.0.0.1:8081"
_KEYS: Final = ("url", "tenant", "token", "ca_file")


class AdminConfigError(Exception):
    """The CLI cannot tell where or as whom to call the admin API: a usage error (exit 2)."""


@dataclass(frozen=True, slots=True)
class AdminTarget:
    """One admin API, one tenant, one token. The token never appears in ``repr``."""

    url: str
    tenant: str
    token: str = field(repr=False)
    # PEM file of the CA(s) to trust for an https:// URL instead of the system's.
    ca_file: Path | None = None

    @property
    def shown_url(self) -> str:
        """The URL without user info, fit for a message."""
        return str(URL(self.url).with_user(None))


def config_path(environ: Mapping[str, str]) -> Path:
    """``$GATEKEEPER_ADMIN_CONFIG``, else ``$XDG_CONFIG_HOME/gatekeeper/admin.toml`` (with
    ``~/.config`` when ``XDG_CONFIG_HOME`` is unset)."""
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gatekeeper" / "admin.toml"


def _read_file(path: Path, *, explicit: bool) -> tuple[dict[str, str], list[str]]:
    """The file's values and any warnings; a missing file is empty unless named explicitly."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise AdminConfigError(f"admin config file {path} does not exist") from None
        return {}, []
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AdminConfigError(f"cannot read admin config file {path}: {exc}") from exc
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise AdminConfigError(
            f"{path}: unknown keys {', '.join(unknown)} (known: {', '.join(_KEYS)})"
        )
    values: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise AdminConfigError(f"{path}: {key} must be a string")
        values[key] = value
    warnings = []
    if "token" in values and path.stat().st_mode & 0o077:
        warnings.append(f"{path} holds a token and others may read it: chmod 600 {path}")
    return values, warnings


def _check_url(url: str) -> str:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise AdminConfigError(
            f"admin URL {url!r} is not an http:// or https:// URL with a host"
            f" (--url, {ENV_URL} or url in the admin config file)"
        )
    return url.rstrip("/")


def resolve_target(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    config_file: Path | None = None,
) -> tuple[AdminTarget, list[str]]:
    """The target from ``flags`` (``url``, ``tenant``, ``token``, ``ca_file``), else
    ``environ``, else the config file; and warnings to print. Raises :class:`AdminConfigError`
    for a missing tenant or token, a bad URL or CA file, or an unreadable config file."""
    explicit = config_file is not None or bool(environ.get(ENV_CONFIG))
    path = config_file or config_path(environ)
    from_file, warnings = _read_file(path, explicit=explicit)
    env_names = {"url": ENV_URL, "tenant": ENV_TENANT, "token": ENV_TOKEN, "ca_file": ENV_CA_FILE}
    values: dict[str, str] = {}
    for key in _KEYS:
        value = flags.get(key) or environ.get(env_names[key]) or from_file.get(key)
        if value:
            values[key] = value
    for key, hint in (
        ("tenant", ""),
        (
            "token",
            "; for a local `gatekeeper up`: export GATEKEEPER_ADMIN_TOKEN=$(gatekeeper token"
            " --tenant T)",
        ),
    ):
        if key not in values:
            raise AdminConfigError(
                f'no admin {key}: give --{key}, set {env_names[key]}, or put {key} = "..."'
                f" in {path}{hint}"
            )
    url = _check_url(values.get("url", DEFAULT_URL))
    ca_file = Path(values["ca_file"]).expanduser() if "ca_file" in values else None
    if ca_file is not None and not ca_file.is_file():
        raise AdminConfigError(f"CA file {ca_file} does not exist (--ca-file or {ENV_CA_FILE})")
    return AdminTarget(url, values["tenant"], values["token"].strip(), ca_file), warnings


def connection_flags() -> argparse.ArgumentParser:
    """The flags every admin command takes, as an argparse parent."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("admin API")
    group.add_argument(
        "--url",
        help=f"admin API base URL (env {ENV_URL}; else url in the config file; default"
        f" {DEFAULT_URL}, the admin API of `gatekeeper up`)",
    )
    group.add_argument(
        "--tenant",
        help=f"tenant id (env {ENV_TENANT}; else tenant in the config file; no default: required)",
    )
    group.add_argument(
        "--token",
        help=f"admin bearer token, e.g. from `gatekeeper token` (env {ENV_TOKEN}; else token in"
        " the config file; no default: required; prefer the env or the file, as flags show in"
        " `ps`)",
    )
    group.add_argument(
        "--admin-config",
        type=Path,
        metavar="PATH",
        help=f"TOML file with url, tenant, token and ca_file (env {ENV_CONFIG}; default"
        " $XDG_CONFIG_HOME/gatekeeper/admin.toml, i.e. ~/.config/gatekeeper/admin.toml)",
    )
    group.add_argument(
        "--ca-file",
        metavar="PEM",
        help=f"CA certificate(s) to trust for an https:// URL (env {ENV_CA_FILE}; else ca_file"
        " in the config file; default: the system's CAs)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print the API's JSON instead of a table (default: a table)",
    )
    return parent
