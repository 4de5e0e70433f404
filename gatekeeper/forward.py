"""What crosses the proxy: the request head sent upstream and the response headers sent back.

Hop-by-hop headers (RFC 9110 §7.6.1: Connection and every header it names, Keep-Alive,
Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-Authenticate,
Proxy-Authorization) are dropped in both directions; ``X-Forwarded-*`` and ``X-Request-Id`` are set.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from multidict import CIMultiDict

__all__ = ["HOP_BY_HOP", "RequestHeadBuilder", "request_id", "response_headers"]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
# Headers the proxy writes itself; a client's copy is dropped (or, for X-Forwarded-*, merged).
_REWRITTEN = frozenset({
    b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-request-id",
})
_RESPONSE_DROPPED = HOP_BY_HOP | {b"content-length"}
_MAX_REQUEST_ID = 200


def request_id(value: str | None) -> str:
    """The client's X-Request-Id when it is sane, else a fresh one."""
    if (value and len(value) <= _MAX_REQUEST_ID and value.isascii() and value.isprintable()
            and " " not in value):
        return value
    return uuid.uuid4().hex


def _connection_tokens(raw_headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in raw_headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


class RequestHeadBuilder:
    """Encodes the head of a request for the upstream. One per worker."""

    __slots__ = ("_host", "_trust_forwarded")

    def __init__(self, upstream_host: str, *, trust_forwarded: bool) -> None:
        self._host = upstream_host.encode("ascii")
        self._trust_forwarded = trust_forwarded

    def build(self, method: str, raw_path: str, raw_headers: Iterable[tuple[bytes, bytes]], *,
              client_ip: str, scheme: str, host: str | None, req_id: str,
              content_length: int | None, chunked: bool) -> bytes:
        raw = tuple(raw_headers)
        named = _connection_tokens(raw) if any(n.lower() == b"connection" for n, _ in raw) else None
        out = [f"{method} {raw_path} HTTP/1.1\r\n".encode("latin-1"), b"Host: ", self._host,
               b"\r\n"]
        forwarded_for: bytes | None = None
        forwarded_proto: bytes | None = None
        forwarded_host: bytes | None = None
        for name, value in raw:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname in _REWRITTEN or (named and lname in named):
                if self._trust_forwarded:
                    if lname == b"x-forwarded-for":
                        forwarded_for = value if forwarded_for is None else (
                            forwarded_for + b", " + value)
                    elif lname == b"x-forwarded-proto":
                        forwarded_proto = value
                    elif lname == b"x-forwarded-host":
                        forwarded_host = value
                continue
            out += (name, b": ", value, b"\r\n")
        ip = client_ip.encode("latin-1")
        out += (b"X-Forwarded-For: ", ip if forwarded_for is None else forwarded_for + b", " + ip,
                b"\r\nX-Forwarded-Proto: ", forwarded_proto or scheme.encode("latin-1"),
                b"\r\n")
        if forwarded_host is None and host:
            forwarded_host = host.encode("latin-1")
        if forwarded_host:
            out += (b"X-Forwarded-Host: ", forwarded_host, b"\r\n")
        out += (b"X-Request-Id: ", req_id.encode("latin-1"), b"\r\n")
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif content_length is not None:
            out.append(b"Content-Length: %d\r\n" % content_length)
        out.append(b"\r\n")
        return b"".join(out)


def response_headers(raw: list[tuple[bytes, bytes]], req_id: str) -> CIMultiDict[str]:
    """The upstream's response headers, minus hop-by-hop ones, for the client."""
    named = _connection_tokens(raw)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in raw:
        lname = name.lower()
        if lname in _RESPONSE_DROPPED or lname in named:
            continue
        headers.add(name.decode("latin-1"), value.decode("latin-1"))
    if "X-Request-Id" not in headers:
        headers["X-Request-Id"] = req_id
    return headers
