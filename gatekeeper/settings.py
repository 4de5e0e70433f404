"""Every setting of the gatekeeper, and the one place that reads them.

Precedence: command-line flags, then ``GATEKEEPER_*`` environment variables, then an optional
TOML file (``--config`` or ``GATEKEEPER_CONFIG``), then the defaults below. Nothing else in the
code base reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from gatekeeper.domain.ids import TENANT_ID_RULE, valid_tenant_id
from gatekeeper.redis_url import parse_redis_url
from gatekeeper.settings_sources import SettingsError, coerce, read_toml

__all__ = [
    "ENV_PREFIX",
    "AuthMode",
    "Settings",
    "SettingsError",
    "TenantSource",
    "check_jwt_secret",
    "mask_url",
]

ENV_PREFIX = "GATEKEEPER_"

AuthMode = Literal["passthrough", "enforce"]
TenantSource = Literal["path", "header", "fixed"]
UnderscoreHeaders = Literal["reject", "drop"]
LogFormat = Literal["text", "json"]
AccessLogMode = Literal["off", "sampled", "all"]

_SECRET_FIELDS = frozenset({"jwt_secret", "key_pepper", "oidc_client_secret"})
_URL_FIELDS = frozenset({"database_url", "database_read_url", "redis_url"})
_UPSTREAM_TLS_FIELDS = (
    "upstream_tls_ca_file",
    "upstream_tls_server_name",
    "upstream_tls_cert_file",
    "upstream_tls_key_file",
    "upstream_tls_verify",
)


# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (32 bytes).
_MIN_HS256_SECRET_BYTES = 32
_PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "placeholder", "example")


def check_jwt_secret(secret: str) -> None:
    """Refuse an HS256 secret that is a placeholder or too short to be one (the admin API and
    ``gatekeeper token`` call this; other commands never use the secret)."""
    lowered = secret.lower()
    if any(marker in lowered for marker in _PLACEHOLDERS):
        raise SettingsError(
            "jwt_secret is a placeholder: set it to a random value of at least"
            f" {_MIN_HS256_SECRET_BYTES} bytes (for example `openssl rand -base64 48`)"
        )
    if len(secret.encode()) < _MIN_HS256_SECRET_BYTES:
        raise SettingsError(
            f"jwt_secret is {len(secret.encode())} bytes; HS256 needs at least"
            f" {_MIN_HS256_SECRET_BYTES} (for example `openssl rand -base64 48`)"
        )


def mask_url(url: str | None) -> str | None:
    """Return ``url`` with any password replaced, for logs and reprs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


@dataclass(frozen=True, slots=True)
class Settings:
    """The gatekeeper's configuration. Build it with :meth:`load`; never mutate it."""

    # Stores. None means "start the embedded default" (only `gatekeeper up` does that).
    database_url: str | None = None
    # A read-only PostgreSQL (a replica) for the admin device list and CSV export; None: the
    # primary (database_url) serves them.
    database_read_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".gatekeeper")

    # Listening.
    host: str = "127.0.0.1"
    proxy_port: int = 8080
    admin_port: int = 8081
    metrics_port: int = 9180
    workers: int = 1

    # Upstream.
    upstream: str | None = None
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 30.0
    upstream_pool_size: int = 256
    # An idle upstream keep-alive connection unused this long is closed (nginx: 60 s).
    upstream_keepalive_timeout: float = 60.0
    max_body_bytes: int = 100 * 1024 * 1024
    # Longest pause between two pieces of a request body before 408 (nginx client_body_timeout).
    client_body_timeout: float = 60.0
    # A client connection older than this (seconds, less up to 10 % of jitter) answers its next
    # request with Connection: close (nginx keepalive_time, Envoy max_connection_duration), so
    # long-lived clients spread over nodes added since they connected. 0: no limit.
    client_keepalive_time: float = 3600.0
    # An https:// upstream: the CAs to trust (a PEM bundle; None: the system's), the name sent
    # as SNI and checked in its certificate (None: the URL's host), and a client certificate
    # for mutual TLS (PEM; both or neither). Verification is turned off only explicitly, for
    # testing: a proxy that forwards credentials must know whom it talks to.
    upstream_tls_ca_file: str | None = None
    upstream_tls_server_name: str | None = None
    upstream_tls_cert_file: str | None = None
    upstream_tls_key_file: str | None = None
    upstream_tls_verify: bool = True

    # Device identification headers.
    header_device_id: str = "X-Device-Id"
    header_app_name: str = "X-App-Name"
    header_app_version: str = "X-App-Version"
    header_os_name: str = "X-OS-Name"
    header_os_version: str = "X-OS-Version"
    header_manufacturer: str = "X-Device-Manufacturer"
    header_model: str = "X-Device-Model"

    # Tenancy.
    tenant_source: TenantSource = "path"
    tenant_header: str = "X-Tenant-Id"
    default_tenant: str = "default"

    # Edge policy.
    auth_mode: AuthMode = "passthrough"
    fail_open: bool = False
    blocklist_resync_seconds: float = 30.0
    key_cache_size: int = 100_000
    trust_forwarded_headers: bool = False
    # A header like X_Device_Id, which CGI/WSGI upstreams read as X-Device-Id: refused with 400,
    # or dropped (nginx ignore_invalid_headers, Envoy headers_with_underscores_action).
    underscore_headers: UnderscoreHeaders = "reject"
    # Per-device rate limit (token bucket per (tenant, device), in each worker's memory): the
    # node-wide rate and burst, each worker enforcing its share (docs/decisions.md). 0 = off;
    # a burst of 0 is one second's worth of the rate. Tenants listed in
    # device_rate_limit_tenants get their own rate (0 exempts them).
    device_rate_limit_per_second: float = 0.0
    device_rate_limit_burst: int = 0
    device_rate_limit_tenants: dict[str, float] = field(default_factory=dict)
    # Buckets one worker keeps at most; beyond it the longest-kept are forgotten.
    device_rate_limit_max_devices: int = 100_000

    # Activity recorder.
    flush_interval_seconds: float = 0.25
    flush_max_devices: int = 5_000
    activity_buffer_max_devices: int = 200_000
    flush_retry_max_seconds: float = 10.0
    activity_touch_seconds: float = 5.0
    # Clone detection: a device back on the hardware it left at most this long ago is a conflict.
    clone_window_seconds: float = 3600.0
    shutdown_drain_seconds: float = 10.0

    # Admin API.
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_issuer: str = "gatekeeper"
    jwt_audience: str = "gatekeeper-admin"
    tenant_claim: str = "tid"
    # Webhooks: private and loopback targets refused unless allowed (a local stack); the
    # delivery timeout; the first retry's delay (doubling, with jitter, for a day).
    webhook_allow_private_targets: bool = False
    webhook_timeout_seconds: float = 10.0
    webhook_retry_base_seconds: float = 5.0
    # Run the webhook dispatcher in this admin process (every replica may: they share the work).
    webhook_dispatcher: bool = True
    environment_url: str = "http://127.0.0.1:8080"
    key_pepper: str | None = None
    # The console's single sign-on (authorization code + PKCE): the provider's issuer URL (its
    # discovery document is {issuer}/.well-known/openid-configuration), this client's id, its
    # secret if the provider gave one (none for a public client), the scopes to ask for.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_scope: str = "openid"

    # TLS on the proxy's and the admin API's ports (PEM files; both or neither). Reloaded on
    # SIGHUP without dropping open connections.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    # Observability.
    metrics_tenant_labels: bool = False
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    # The proxy's access log (stdout): "sampled" logs every error and denial and one success in
    # access_log_sample; "all" every request; "off" none.
    access_log: AccessLogMode = "sampled"
    access_log_sample: int = 100

    def __post_init__(self) -> None:
        self._check_numbers()
        if self.redis_url is not None:
            parse_redis_url(self.redis_url)  # a malformed one is a SettingsError now, not later
        for port_name in ("proxy_port", "admin_port", "metrics_port"):
            port = getattr(self, port_name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{port_name} must be 0..65535, got {port}")
        positive = (
            "workers",
            "upstream_connect_timeout",
            "upstream_read_timeout",
            "upstream_pool_size",
            "max_body_bytes",
            "flush_interval_seconds",
            "flush_max_devices",
            "activity_buffer_max_devices",
            "blocklist_resync_seconds",
            "key_cache_size",
            "flush_retry_max_seconds",
            "clone_window_seconds",
            "client_body_timeout",
            "upstream_keepalive_timeout",
            "access_log_sample",
            "webhook_timeout_seconds",
            "webhook_retry_base_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        for name, choices in (
            ("auth_mode", AuthMode),
            ("tenant_source", TenantSource),
            ("log_format", LogFormat),
            ("access_log", AccessLogMode),
            ("underscore_headers", UnderscoreHeaders),
        ):
            if getattr(self, name) not in get_args(choices):
                raise SettingsError(f"{name} must be one of {get_args(choices)}")
        if not valid_tenant_id(self.default_tenant):
            raise SettingsError(f"default_tenant: {TENANT_ID_RULE}")
        if (self.oidc_issuer is None) != (self.oidc_client_id is None):
            raise SettingsError("oidc_issuer and oidc_client_id go together: set both or neither")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError("tls_cert_file and tls_key_file go together: set both or neither")
        self._check_upstream()
        self._check_rate_limit()
        if self.activity_buffer_max_devices < self.flush_max_devices:
            raise SettingsError("activity_buffer_max_devices must be >= flush_max_devices")

    def _check_numbers(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            # "nan" and "inf" parse as floats, and nan compares false with everything: a nan
            # timeout would never fire and would pass every range check.
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{item.name} must be a finite number, got {value}")
        if self.client_keepalive_time < 0:
            raise SettingsError(
                "client_keepalive_time must be >= 0 (0: no limit), "
                f"got {self.client_keepalive_time}"
            )

    def _check_rate_limit(self) -> None:
        for name in ("device_rate_limit_per_second", "device_rate_limit_burst"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.device_rate_limit_max_devices <= 0:
            raise SettingsError("device_rate_limit_max_devices must be positive")
        if not isinstance(self.device_rate_limit_tenants, dict):
            raise SettingsError("device_rate_limit_tenants must be a table of tenant = rate")
        for tenant, rate in self.device_rate_limit_tenants.items():
            if not valid_tenant_id(tenant):
                raise SettingsError(f"device_rate_limit_tenants: {tenant!r}: {TENANT_ID_RULE}")
            # bool is an int: `acme = true` is a mistake, not a rate of 1.
            if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
                raise SettingsError(
                    f"device_rate_limit_tenants: {tenant}: a rate >= 0 per second, got {rate!r}"
                )

    def _check_upstream(self) -> None:
        if (self.upstream_tls_cert_file is None) != (self.upstream_tls_key_file is None):
            raise SettingsError(
                "upstream_tls_cert_file and upstream_tls_key_file go together: set both or neither"
            )
        if self.upstream is None:
            return
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError("upstream must be an http:// or https:// URL with a host")
        tls_set = [
            name
            for name in _UPSTREAM_TLS_FIELDS
            if getattr(self, name) is not None and getattr(self, name) is not True
        ]
        if parts.scheme == "http" and tls_set:
            # Ignoring them would leave an operator believing a plain-text hop is verified.
            raise SettingsError(
                f"{', '.join(tls_set)} apply to an https:// upstream; upstream is {self.upstream}"
            )

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value is not None:
                value = "***"
            elif f.name in _URL_FIELDS:
                value = mask_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_mapping(self) -> dict[str, Any]:
        """Plain values (secrets included): for handing settings to worker processes only."""
        return {
            name: (str(v) if isinstance(v := getattr(self, name), Path) else v)
            for name in self.field_names()
        }

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if not f.name.startswith("_")]

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
    ) -> Settings:
        """Merge flags over environment over TOML file over defaults."""
        env = os.environ if environ is None else environ
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        path = config_file or (
            Path(env[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in env else None
        )
        merged: dict[str, Any] = {}
        if path is not None:
            merged.update(read_toml(path))
        for name in cls.field_names():
            key = ENV_PREFIX + name.upper()
            if key in env:
                merged[name] = env[key]
        merged.update(flags)
        return cls.from_mapping(merged)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        known = {f.name: f for f in fields(cls) if not f.name.startswith("_")}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(unknown)}")
        defaults = cls()
        coerced = {name: coerce(name, raw, getattr(defaults, name)) for name, raw in values.items()}
        return cls(**coerced)
