"""What a ``redis_url`` names: one server, a Redis/Valkey Cluster, or a Sentinel-watched primary.

Forms (shared/DESIGN.md, "Scale beyond one node"):

- ``redis://[user:password@]host:port[/db]``, ``rediss://…`` (TLS), ``unix:///path.sock``: one
  server, handed to redis-py's ``from_url`` as it is;
- ``redis+cluster://[user:password@]host:port[,host:port…]`` (``rediss+cluster://`` for TLS):
  seed nodes of a cluster; the client learns the rest from them;
- ``redis+sentinel://[user:password@]host:port[,host:port…]/service`` (``rediss+sentinel://``):
  the sentinels and the name of the service they watch. The user and password are the data
  servers'; the sentinels are asked without them.

Pure parsing, no I/O: :mod:`gatekeeper.settings` checks the URL with it at load, so a malformed
one stops a command with a :class:`SettingsError` before any connection is tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from gatekeeper.settings_sources import SettingsError

__all__ = ["RedisTarget", "parse_redis_url"]

Topology = Literal["single", "cluster", "sentinel"]

_SINGLE_SCHEMES = frozenset({"redis", "rediss", "unix"})
_MULTI_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_KNOWN = "redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``redis_url``. ``nodes`` and ``service`` are empty for a single server (its
    URL goes to redis-py unchanged)."""

    topology: Topology
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def __repr__(self) -> str:
        secret = "***" if self.password is not None else None
        return f"RedisTarget({self.topology}, nodes={self.nodes}, password={secret})"


def _node(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 literal
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"redis_url: {text!r} is not host:port (a port of 1..65535)")
    return host, int(port)


def parse_redis_url(url: str) -> RedisTarget:
    """Check and split ``url``; raises :class:`SettingsError` saying what is wrong with it
    (never echoing its password)."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or (scheme not in _SINGLE_SCHEMES and scheme not in _MULTI_SCHEMES):
        raise SettingsError(f"redis_url: unknown scheme {scheme!r}; use {_KNOWN}")
    if scheme in _SINGLE_SCHEMES:
        return RedisTarget("single", url)
    topology, tls = _MULTI_SCHEMES[scheme]
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a bracket left open, say
        raise SettingsError(f"redis_url: cannot parse it ({exc})") from None
    if parts.query or parts.fragment:
        raise SettingsError(f"redis_url: {scheme}:// takes no query string or fragment")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hosts:
        raise SettingsError(f"redis_url: {scheme}:// needs at least one host:port")
    nodes = tuple(_node(h) for h in hosts.split(","))
    path = parts.path.strip("/")
    if topology == "cluster":
        if path not in ("", "0"):
            raise SettingsError("redis_url: a cluster has database 0 only (no path)")
        return RedisTarget("cluster", url, nodes, "", username, password, tls)
    if not path or "/" in path:
        raise SettingsError(
            f"redis_url: {scheme}:// needs the service name as its path,"
            f" as in {scheme}://host:26379/mymaster"
        )
    return RedisTarget("sentinel", url, nodes, unquote(path), username, password, tls)
