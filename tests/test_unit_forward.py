"""gatekeeper.edge.forward without a server: the request head sent upstream, the response head
sent back, and request ids (tests/test_forwarding.py covers the same through a real proxy)."""

from __future__ import annotations

import pytest

from gatekeeper.edge.forward import HOP_BY_HOP, RequestHeadBuilder, RequestIds, response_head

Headers = list[tuple[bytes, bytes]]


def _head(
    raw: Headers,
    *,
    connection: bytes | None = None,
    trust: bool = False,
    host: bytes | None = b"edge.example",
    **options: object,
) -> tuple[bytes, Headers]:
    """The head the builder writes, as its request line and its header list."""
    builder = RequestHeadBuilder("upstream.internal:9000", trust_forwarded=trust)
    arguments: dict[str, object] = {
        "client_ip": "203.0.113.7",
        "scheme": b"https",
        "host": host,
        "req_id": b"rid-1",
        "content_length": None,
        "chunked": False,
        **options,
    }
    head = builder.build("POST", "/api/t/x?y=1", raw, connection, **arguments)  # type: ignore[arg-type]
    assert head.endswith(b"\r\n\r\n")
    line, *rest = head[:-4].split(b"\r\n")
    headers = [tuple(h.split(b": ", 1)) for h in rest]
    return line, [(n, v) for n, v in headers]


def _names(headers: Headers) -> list[bytes]:
    return [name.lower() for name, _ in headers]


def _values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


def test_request_line_and_host_are_the_upstreams() -> None:
    line, headers = _head([(b"Host", b"edge.example"), (b"Accept", b"*/*")])
    assert line == b"POST /api/t/x?y=1 HTTP/1.1"
    assert headers[0] == (b"Host", b"upstream.internal:9000")
    assert _values(headers, b"host") == [b"upstream.internal:9000"]
    assert (b"Accept", b"*/*") in headers


def test_hop_by_hop_headers_are_dropped_whatever_their_case() -> None:
    raw = [(name.upper(), b"v") for name in sorted(HOP_BY_HOP)] + [(b"X-Kept", b"1")]
    _, headers = _head(raw, connection=b"close")
    assert not set(_names(headers)) & HOP_BY_HOP
    assert _values(headers, b"x-kept") == [b"1"]


def test_headers_named_by_connection_are_dropped() -> None:
    raw = [
        (b"Connection", b"keep-alive, X-Secret ,x-other"),
        (b"X-Secret", b"s"),
        (b"X-Other", b"o"),
        (b"X-Kept", b"k"),
    ]
    _, headers = _head(raw, connection=b"keep-alive, X-Secret ,x-other")
    assert b"x-secret" not in _names(headers) and b"x-other" not in _names(headers)
    assert _values(headers, b"x-kept") == [b"k"]


def test_drop_names_further_headers() -> None:
    _, headers = _head([(b"X_Device_Id", b"alias"), (b"X-Kept", b"k")], drop=[b"x_device_id"])
    assert _names(headers).count(b"x_device_id") == 0


def test_client_framing_and_request_id_are_replaced() -> None:
    raw = [
        (b"Content-Length", b"999"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Expect", b"100-continue"),
        (b"X-Request-Id", b"client"),
    ]
    _, headers = _head(raw, content_length=5)
    assert _values(headers, b"content-length") == [b"5"]
    assert _values(headers, b"transfer-encoding") == []
    assert _values(headers, b"expect") == []
    assert _values(headers, b"x-request-id") == [b"rid-1"]
    _, chunked = _head(raw, chunked=True)
    assert _values(chunked, b"transfer-encoding") == [b"chunked"]
    assert _values(chunked, b"content-length") == []


def test_forwarded_headers_are_fresh_unless_trusted() -> None:
    raw = [
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"X-Forwarded-For", b"10.0.0.2"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"spoofed.example"),
    ]
    _, fresh = _head(raw)
    assert _values(fresh, b"x-forwarded-for") == [b"203.0.113.7"]
    assert _values(fresh, b"x-forwarded-proto") == [b"https"]
    assert _values(fresh, b"x-forwarded-host") == [b"edge.example"]
    _, trusted = _head(raw, trust=True)
    assert _values(trusted, b"x-forwarded-for") == [b"10.0.0.1, 10.0.0.2, 203.0.113.7"]
    assert _values(trusted, b"x-forwarded-proto") == [b"http"]
    assert _values(trusted, b"x-forwarded-host") == [b"spoofed.example"]
    _, no_host = _head([], host=None)
    assert _values(no_host, b"x-forwarded-host") == []


def test_an_upgrade_keeps_its_own_connection_and_upgrade_headers() -> None:
    raw = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    _, headers = _head(raw, connection=b"Upgrade", upgrade=True)
    assert _values(headers, b"connection") == [b"Upgrade"]
    assert _values(headers, b"upgrade") == [b"websocket"]


def test_response_head_drops_hop_by_hop_and_connection_named_headers() -> None:
    raw = [
        (b"Connection", b"keep-alive, X-Internal"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Internal", b"secret"),
        (b"Content-Length", b"12"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Type", b"text/plain"),
    ]
    head = response_head(
        200, b"OK", raw, b"rid-1", framing=b"Content-Length: 3\r\n", keep_alive=False
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"X-Request-Id: rid-1\r\n"
        b"Content-Length: 3\r\n"
        b"Connection: close\r\n\r\n"
    )


def test_response_head_keeps_the_upstreams_request_id_and_names_an_empty_reason() -> None:
    head = response_head(
        599, b"", [(b"X-Request-Id", b"upstream")], b"rid-1", framing=b"", keep_alive=True
    )
    assert head == b"HTTP/1.1 599 Unknown\r\nX-Request-Id: upstream\r\n\r\n"


@pytest.mark.parametrize("given", [b"abc-123", b"!~", b"x" * 200])
def test_a_sane_request_id_is_kept(given: bytes) -> None:
    assert RequestIds()(given) == given


@pytest.mark.parametrize(
    "given",
    [
        b"",
        b"has space",
        b"x" * 201,
        b"caf\xc3\xa9",
        b"tab\t",
    ],
)
def test_an_insane_request_id_is_replaced(given: bytes) -> None:
    assert RequestIds()(given) != given


def test_fresh_request_ids_are_unique_and_32_hex_characters() -> None:
    ids, other = RequestIds(), RequestIds()
    fresh = [ids(None) for _ in range(1000)] + [other(None) for _ in range(1000)]
    assert len(set(fresh)) == 2000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in fresh)
