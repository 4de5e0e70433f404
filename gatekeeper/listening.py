"""The one error every server of the ``gatekeeper`` command raises when it cannot take its port.

A bind that fails is the commonest start failure in production (a port still held by the previous
process, a port below 1024 without the capability): the command must say which port, in one
line, and exit, not hang or print a traceback. Every service converts its ``OSError`` here, so
the command catches one type for all of them.
"""

from __future__ import annotations

import os
import socket

__all__ = ["CANNOT_LISTEN", "ListenError", "check_port", "listen_error"]

# The exit code of a ``gatekeeper.runtime.worker`` process whose port is taken: its supervisor
# then stops instead of starting another worker that would fail the same way.
CANNOT_LISTEN = 3


class ListenError(OSError):
    """``cannot listen on HOST:PORT: REASON``, the reason being the OS's text, lower-cased."""

    def __str__(self) -> str:
        # Without this OSError prefixes "[Errno 98]": the errno stays available as .errno.
        return self.strerror or ""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_error(host: str, port: int, exc: OSError) -> ListenError:
    # os.strerror and not str(exc): asyncio and uvloop wrap the errno text in their own sentence
    # (with a repr of the address tuple), which is not what an operator should have to read.
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc).lower()
    return ListenError(exc.errno or 0, f"cannot listen on {_address(host, port)}: {reason}")


def check_port(host: str, port: int) -> None:
    """Raise ``ListenError`` if ``host:port`` cannot be bound right now (port 0 always can).

    Only a probe, taken before slow or forking work so that a taken port fails in milliseconds;
    the real bind still reports its own failure, since the port can be taken in between. The
    probe sets SO_REUSEADDR as asyncio's ``create_server`` does, so a port in TIME_WAIT passes
    here as it would there."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise listen_error(host, port, exc) from exc
