"""What crosses the proxy: the request head sent upstream and the response headers sent back.

Hop-by-hop headers (RFC 9110 §7.6.1: Connection and every header it names, Keep-Alive,
Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-Authenticate,
Proxy-Authorization) are dropped in both directions; ``X-Forwarded-*`` and ``X-Request-Id`` are set.
"""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import Sequence

__all__ = ["EDGE_HEADERS", "HOP_BY_HOP", "RequestHeadBuilder", "RequestIds", "response_head"]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Headers the proxy writes itself; a client's copy is dropped (or, for X-Forwarded-*, merged).
# Expect is answered by the edge (100 Continue once the request is admitted), as Envoy does.
_REWRITTEN = frozenset(
    {
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"expect",
    }
)
_DROPPED = HOP_BY_HOP | _REWRITTEN
# Every header whose client copy the edge drops or replaces: an alias of one of these (X_Host,
# Transfer_Encoding) must not reach the upstream either.
EDGE_HEADERS = _DROPPED
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_RESPONSE_DROPPED = HOP_BY_HOP | {b"content-length"}
_MAX_REQUEST_ID = 200
_VISIBLE = bytes(range(33, 127))  # a request id must be visible ASCII, no space


class RequestIds:
    """X-Request-Id values: the client's when sane, else a fresh one.

    Fresh ids are a random per-process prefix and a counter (32 hex characters): unique across
    workers and restarts like a UUID, without a system call per request."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8).encode()
        self._counter = itertools.count(1)

    def __call__(self, given: bytes | None) -> bytes:
        if given is None:
            return b"%s%016x" % (self._prefix, next(self._counter))
        if (
            0 < len(given) <= _MAX_REQUEST_ID
            and given.isascii()
            and given.translate(None, _VISIBLE) == b""
        ):
            return given
        return b"%s%016x" % (self._prefix, next(self._counter))


class RequestHeadBuilder:
    """Encodes the head of a request for the upstream. One per worker."""

    __slots__ = ("_host", "_trust_forwarded")

    def __init__(self, upstream_host: str, *, trust_forwarded: bool) -> None:
        self._host = upstream_host.encode("ascii")
        self._trust_forwarded = trust_forwarded

    def build(
        self,
        method: str,
        raw_path: str,
        raw: list[tuple[bytes, bytes]],
        connection: bytes | None,
        *,
        client_ip: str,
        scheme: bytes,
        host: bytes | None,
        req_id: bytes,
        content_length: int | None,
        chunked: bool,
        upgrade: bool = False,
        drop: Sequence[bytes] = (),
    ) -> bytes:
        """``drop`` names (lower-case) further headers not to forward."""
        named = _named_by_connection(connection) if connection is not None else frozenset()
        if drop:
            named = named.union(drop)
        out = [
            f"{method} {raw_path} HTTP/1.1\r\n".encode("latin-1"),
            b"Host: ",
            self._host,
            b"\r\n",
        ]
        forwarded: dict[bytes, bytes] = {}
        for name, value in raw:
            lname = name.lower()
            if lname in _DROPPED or (named and lname in named):
                if lname in _FORWARDED and self._trust_forwarded:
                    forwarded[lname] = (
                        forwarded[lname] + b", " + value if lname in forwarded else value
                    )
                continue
            out += (name, b": ", value, b"\r\n")
        out += self._forwarded_headers(forwarded, client_ip, scheme, host)
        out += (b"X-Request-Id: ", req_id, b"\r\n")
        if upgrade:
            # The one case where hop-by-hop headers cross: the upgrade itself (RFC 9110 §7.8).
            out.append(b"Connection: Upgrade\r\n")
            out += [b"Upgrade: %s\r\n" % v for n, v in raw if n.lower() == b"upgrade"]
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif content_length is not None:
            out.append(b"Content-Length: %d\r\n" % content_length)
        out.append(b"\r\n")
        return b"".join(out)

    @staticmethod
    def _forwarded_headers(
        trusted: dict[bytes, bytes], client_ip: str, scheme: bytes, host: bytes | None
    ) -> list[bytes]:
        """X-Forwarded-For/-Proto/-Host: this hop appended to trusted values, else fresh."""
        ip = client_ip.encode("latin-1")
        chain = trusted.get(b"x-forwarded-for")
        out = [
            b"X-Forwarded-For: ",
            ip if chain is None else chain + b", " + ip,
            b"\r\nX-Forwarded-Proto: ",
            trusted.get(b"x-forwarded-proto", scheme),
            b"\r\n",
        ]
        forwarded_host = trusted.get(b"x-forwarded-host", host)
        if forwarded_host:
            out += (b"X-Forwarded-Host: ", forwarded_host, b"\r\n")
        return out


@functools.lru_cache(maxsize=256)
def _named_by_connection(value: bytes) -> frozenset[bytes]:
    """Headers a Connection header names, beyond the standard hop-by-hop ones (cached: the
    same few values, ``keep-alive`` above all, come back on every response)."""
    return frozenset(t.strip().lower() for t in value.split(b",")) - HOP_BY_HOP


def response_head(
    status: int,
    reason: bytes,
    raw: list[tuple[bytes, bytes]],
    req_id: bytes,
    *,
    framing: bytes,
    keep_alive: bool,
) -> bytes:
    """The response head for the client: the upstream's status and headers minus hop-by-hop
    ones (and its framing, replaced by ``framing``), plus X-Request-Id."""
    kept: list[tuple[bytes, bytes, bytes]] = []
    named: frozenset[bytes] = frozenset()
    for name, value in raw:
        lname = name.lower()
        if lname in _RESPONSE_DROPPED:
            if lname == b"connection":
                named |= _named_by_connection(value)
            continue
        kept.append((lname, name, value))
    out = [b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Unknown")]
    has_request_id = False
    for lname, name, value in kept:
        if named and lname in named:
            continue
        if lname == b"x-request-id":
            has_request_id = True
        out += (name, b": ", value, b"\r\n")
    if not has_request_id:
        out += (b"X-Request-Id: ", req_id, b"\r\n")
    out.append(framing)
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out)
