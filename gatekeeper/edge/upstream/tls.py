"""TLS to an ``https://`` upstream: one client context per worker, made from the
``upstream_tls_*`` settings, and what a failed handshake tells the operator.

The context is made once and shared by every connection of the pool: building one loads the CA
bundle (milliseconds), and the pooled keep-alive connections make the handshake itself rare.
Verification is on unless ``upstream_tls_verify`` is false; TLS 1.2 at least; ALPN offers
``http/1.1`` only, the one protocol the pool speaks. Not compiled (build_info.HOT_MODULES): it
runs at start and when a handshake fails, never per request.
"""

from __future__ import annotations

import logging
import ssl
import time
from urllib.parse import urlsplit

from prometheus_client import Counter

from gatekeeper.edge.metrics import REGISTRY
from gatekeeper.settings import Settings
from gatekeeper.tls import file_error

__all__ = ["TLS_ERRORS", "UpstreamTls", "upstream_tls"]

_log = logging.getLogger(__name__)

# Why handshakes failed: a fixed set, so the label stays small (never the upstream's text).
_REASONS = ("untrusted", "name_mismatch", "handshake")
TLS_ERRORS = Counter(
    "gatekeeper_upstream_tls_errors_total",
    "Handshakes with an https:// upstream that failed, by reason: untrusted (certificate not"
    " signed by a trusted CA, expired, ...), name_mismatch (certificate not for the server"
    " name), handshake (anything else: protocol, a refused client certificate).",
    ["reason"],
    registry=REGISTRY,
)
for _name in _REASONS:
    TLS_ERRORS.labels(_name)  # every series present from the start, at 0, for the alert

# One warning per this many seconds at most.
_LOG_EVERY_SECONDS = 10.0
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH_CODES = frozenset({62, 64})


class UpstreamTls:
    """The context every upstream connection uses, the name it sends as SNI and checks, and the
    throttle of the warnings about failed handshakes (one per worker's upstream)."""

    __slots__ = ("_last_log", "_suppressed", "context", "server_name")

    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        self.context = context
        self.server_name = server_name
        self._last_log = -_LOG_EVERY_SECONDS
        self._suppressed = 0

    def handshake_failed(self, exc: ssl.SSLError, host: str, port: int) -> None:
        """Count a failed handshake and say why, at most once per ten seconds (with how many
        were not logged in between): a broken certificate fails every request."""
        reason = _reason(exc)
        TLS_ERRORS.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_log < _LOG_EVERY_SECONDS:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._last_log, self._suppressed = now, 0
        cause = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else exc.reason
        cause = (cause or str(exc)).rstrip(".")
        _log.warning(
            "upstream: TLS handshake with %s:%d (server name %s) failed, %s: %s; answering 502%s%s",
            host,
            port,
            self.server_name,
            reason,
            cause,
            _HINTS[reason],
            more,
        )


def upstream_tls(settings: Settings) -> UpstreamTls | None:
    """The upstream's TLS, or None for an ``http://`` upstream. Raises
    :class:`~gatekeeper.tls.TlsFileError` naming the setting whose file cannot be used."""
    if settings.upstream is None:
        return None
    parts = urlsplit(settings.upstream)
    if parts.scheme != "https":
        return None
    ca_file = settings.upstream_tls_ca_file
    try:
        # With a bundle, only its CAs are trusted (not the system's): a private PKI's upstream
        # is not also accepted with any public certificate for its name.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise file_error(f"upstream_tls_ca_file {ca_file}", exc) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if not settings.upstream_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    cert, key = settings.upstream_tls_cert_file, settings.upstream_tls_key_file
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise file_error(
                f"upstream_tls_cert_file {cert} / upstream_tls_key_file {key}", exc
            ) from exc
    server_name = settings.upstream_tls_server_name or parts.hostname
    assert server_name  # Settings refuses an upstream URL without a host
    return UpstreamTls(context, server_name)


_HINTS = {
    "untrusted": " (is its CA in upstream_tls_ca_file?)",
    "name_mismatch": " (upstream_tls_server_name sets the name to check)",
    "handshake": "",
}


def _reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "name_mismatch" if exc.verify_code in _NAME_MISMATCH_CODES else "untrusted"
    return "handshake"
