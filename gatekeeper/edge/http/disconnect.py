"""The one exception of the HTTP layer that handlers catch, in a module of its own: the hot
modules are compiled by mypyc, which compiles no subclass of a built-in exception other than
``Exception``, so this one stays a Python class by living outside them."""

from __future__ import annotations

__all__ = ["ClientDisconnected"]


class ClientDisconnected(ConnectionResetError):
    """The client went away while its answer was stuck in a paused buffer: raised by
    :meth:`ClientConnection.drain`, so a handler stops streaming to nobody."""

    def __str__(self) -> str:
        return "client went away"
