"""What the edge accepts of a request head before deciding anything about the device.

Every decision (tenant, device, block) must be taken on the request exactly as the upstream will
see it, so this module turns the head into one canonical form first and refuses what has none:

- the HTTP version and framing rules of RFC 9112 that nginx enforces (no HTTP/0.9, a single
  ``Host`` on HTTP/1.1, no ``Transfer-Encoding`` on HTTP/1.0, no ``CONNECT``);
- the request target: absolute-form becomes origin-form (RFC 9112 §3.2.2), and the path is
  normalised once (RFC 3986 §6.2.2: unreserved characters percent-decoded, hex digits
  upper-cased; §5.2.4: dot segments removed; repeated slashes merged), as Envoy's
  ``normalize_path`` and ``merge_slashes`` do. The normalised path is what is checked and what is
  forwarded. A path an upstream could still read another way is refused: encoded slashes and
  backslashes, double-encoded dots and slashes, dot segments carrying ``;`` parameters;
- header names with underscores that an upstream (CGI, WSGI, PHP) would read as a header the
  edge checks or rewrites (``X_Device_Id`` as ``X-Device-Id``).

Pure functions, no I/O: called once per request on the hot path, so the common case (an
already-normal path) costs a few substring checks.
"""

from __future__ import annotations

from collections.abc import Iterable

from gatekeeper.edge.http.request import Request

__all__ = [
    "AdmissionError",
    "HeadAdmission",
    "Target",
    "normalise_path",
    "parse_target",
    "underscore_aliases",
]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Percent-encodings whose decoded character would move a segment boundary for an upstream that
# decodes before routing: "/" and "\" (some servers treat it as "/"), and "%" itself followed by
# those or by a dot (double encoding, for upstreams that decode twice).
_ESCAPED_SEPARATORS = frozenset({"2F", "5C"})
_DOUBLE_ENCODED = frozenset({"2E", "2F", "5C"})
_SCHEMES = ("http://", "https://")


class AdmissionError(ValueError):
    """The head cannot be admitted as it is; answered with ``status``, then the connection
    closes (what follows it cannot be trusted to be framed the way the client meant)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


def _bad(detail: str) -> AdmissionError:
    return AdmissionError(400, "Bad request", detail)


class Target:
    """A request target in origin-form: ``path`` normalised, ``query`` as sent (with its
    ``?``), and ``authority`` when the client sent absolute-form."""

    __slots__ = ("authority", "path", "query")

    def __init__(self, path: str, query: str, authority: str | None) -> None:
        self.path = path
        self.query = query
        self.authority = authority

    @property
    def origin_form(self) -> str:
        return self.path + self.query


def parse_target(method: str, raw: str) -> Target:
    """The request target of ``method`` in normal origin-form; raises :class:`AdmissionError`."""
    authority: str | None = None
    if not raw.startswith("/"):
        if raw == "*" and method == "OPTIONS":
            return Target("*", "", None)
        lowered = raw[:8].lower()
        scheme = next((s for s in _SCHEMES if lowered.startswith(s)), None)
        if scheme is None:
            raise _bad("The request target must be a path or an absolute http(s) URI.")
        rest = raw[len(scheme) :]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, raw = rest[:cut], rest[cut:]
        if not authority or "@" in authority:
            raise _bad("An absolute request target needs a host and no user information.")
        if not raw.startswith("/"):
            raw = "/" + raw  # "http://h" and "http://h?q" both mean the root (RFC 9112 §3.2.2)
    if "#" in raw:
        raise _bad("A request target has no fragment.")
    path, mark, query = raw.partition("?")
    return Target(normalise_path(path), mark + query, authority)


def normalise_path(path: str) -> str:
    """``path`` (starting with ``/``) in normal form; raises :class:`AdmissionError` for a path
    that has none an upstream would agree on."""
    if "\\" in path:
        raise _bad("A backslash is not allowed in the path.")
    if "%" not in path and "//" not in path and "/." not in path:
        return path  # already normal: the common case
    out: list[str] = []
    segments = path.split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments[1:], 1):
        if "%" in segment:
            segment = _decode_unreserved(segment)
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            if segment.partition(";")[0] in (".", ".."):
                # Tomcat and friends strip ";params" before resolving dot segments.
                raise _bad("A dot segment must not carry parameters.")
            out.append(segment)
            continue
        if index == last and out:
            out.append("")  # "/a/b/.." and "/a/./" keep their trailing slash
    return "/" + "/".join(out)


def _decode_unreserved(segment: str) -> str:
    parts = segment.split("%")
    decoded = [parts[0]]
    for part in parts[1:]:
        pair = part[:2]
        if len(pair) < 2 or not _HEX.issuperset(pair):
            raise _bad("The path has a malformed percent-encoding.")
        pair = pair.upper()
        if pair in _ESCAPED_SEPARATORS:
            raise _bad("Encoded slashes and backslashes are not allowed in the path.")
        if pair == "25" and part[2:4].upper() in _DOUBLE_ENCODED:
            raise _bad("Double-encoded dots and slashes are not allowed in the path.")
        byte = int(pair, 16)
        decoded.append((chr(byte) if byte in _UNRESERVED else "%" + pair) + part[2:])
    return "".join(decoded)


def underscore_aliases(names: Iterable[bytes], protected: frozenset[bytes]) -> list[bytes]:
    """The lower-case header names among ``names`` (which contain ``_``) that an upstream
    mapping ``_`` to ``-`` would read as one of ``protected`` (lower-case, dashed)."""
    return [name for name in names if name.replace(b"_", b"-") in protected]


class HeadAdmission:
    """The checks above, applied to one request head (built once per worker)."""

    __slots__ = ("_drop_aliases", "_protected")

    def __init__(self, protected: Iterable[bytes], *, drop_aliases: bool) -> None:
        self._protected = frozenset(protected)
        self._drop_aliases = drop_aliases

    def __call__(self, request: Request) -> str:
        """Admit ``request``'s head or raise :class:`AdmissionError`. On return,
        ``request.target`` is the normal origin-form target, ``request.underscored`` the alias
        headers to drop, and the ``host`` look-up the effective host; returns the path."""
        raw = request.raw_path
        lookup = request.lookup
        # The common case in one expression (a third of the general path's cost, measured):
        # HTTP/1.1 with one Host, nothing repeated or underscored, no Expect, and an
        # origin-form target that is already normal. Anything else takes the general path.
        if (
            request.version == "1.1"
            and b"host" in lookup
            and not request.repeated
            and not request.underscored
            and b"expect" not in lookup
            and raw[:1] == "/"
            and "%" not in raw
            and "//" not in raw
            and "/." not in raw
            and "\\" not in raw
            and "#" not in raw
            and request.method != "CONNECT"
        ):
            return raw.partition("?")[0]
        return self._admit(request)

    def _admit(self, request: Request) -> str:
        version = request.version
        lookup = request.lookup
        if version != "1.1":
            if version != "1.0":
                if version == "0.9":
                    raise _bad("HTTP/0.9 is not supported.")
                raise AdmissionError(
                    505, "HTTP version not supported", "Only HTTP/1.0 and HTTP/1.1 are served here."
                )
            if request.chunked:
                # HTTP/1.0 has no chunked coding: a hop that ignores the header would frame the
                # body by its length, and the two would disagree (RFC 9112 §6.1).
                raise _bad("Transfer-Encoding is not allowed in HTTP/1.0.")
        elif b"host" not in lookup:
            raise _bad("An HTTP/1.1 request needs a Host header.")
        if b"host" in request.repeated:
            raise _bad("The Host header must be sent once.")
        method = request.method
        if method == "CONNECT":
            raise AdmissionError(405, "Method not allowed", "CONNECT is not proxied here.")
        expect = lookup.get(b"expect")
        if expect is not None and expect.lower() != b"100-continue":
            raise AdmissionError(417, "Expectation failed", "Only 100-continue is understood.")
        target = parse_target(method, request.raw_path)
        request.target = target.origin_form
        if target.authority is not None:
            # RFC 9112 §3.2.2: with an absolute-form target the Host header is replaced.
            lookup[b"host"] = target.authority.encode("latin-1")
        if request.underscored:
            aliases = underscore_aliases(request.underscored, self._protected)
            if aliases and not self._drop_aliases:
                name = aliases[0].decode("latin-1")
                raise _bad(
                    f"The header {name} would be read as "
                    f"{name.replace('_', '-')} upstream; send that name instead."
                )
            for alias in aliases:
                lookup.pop(alias, None)  # never read by the edge either
            request.underscored = aliases
        return target.path
