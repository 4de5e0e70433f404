"""TLS for the proxy's and the admin API's listening ports: one server context per process,
loaded from the ``tls_cert_file`` and ``tls_key_file`` settings, and loaded again on SIGHUP.

Loading a new chain into the same context is what makes the reload safe: connections already
open keep the session they negotiated, and every handshake after the reload presents the new
certificate (nginx's ``reload``, Envoy's SDS rotation). TLS 1.2 at least; HTTP/1.1 over ALPN.
"""

from __future__ import annotations

import ssl

from gatekeeper.settings import Settings, SettingsError

__all__ = ["TlsFileError", "file_error", "load_chain", "server_context"]

# How long a client may take to finish its handshake before the connection is dropped.
HANDSHAKE_TIMEOUT_SECONDS = 10.0


class TlsFileError(SettingsError):
    """A certificate, key or CA file a setting names cannot be used. At start the command stops
    with exit code 1, as for a store it cannot reach: the value may be right, the file is not."""


def file_error(setting: str, exc: OSError | ssl.SSLError) -> TlsFileError:
    """One line naming the setting(s) and the cause (``No such file or directory``, OpenSSL's
    reason), without the traceback's noise."""
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return TlsFileError(f"{setting}: {cause}")


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for a listening port, or None when TLS is not configured."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    load_chain(context, settings)
    return context


def load_chain(context: ssl.SSLContext, settings: Settings) -> None:
    """(Re)load the certificate chain and key; :class:`SettingsError` naming both files and the
    cause when they cannot be read or do not match (the context keeps its previous chain)."""
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise file_error(
            f"tls_cert_file {settings.tls_cert_file} / tls_key_file {settings.tls_key_file}", exc
        ) from exc
