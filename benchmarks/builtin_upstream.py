"""The fallback upstream: a tiny keep-alive HTTP/1.1 server that answers every request alike.

Used when nginx is not installed. It is a raw asyncio protocol on uvloop with the httptools
parser, so it costs far less per request than any proxy under test. Run it as
``python -m benchmarks.builtin_upstream --port P``; with ``--tls-cert`` and ``--tls-key`` it
serves TLS (the https-upstream cost, benchmarks/cpucost.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from typing import cast

import httptools
import uvloop

__all__ = ["BODY", "main"]

BODY = b'{"ok":true,"service":"bench-upstream"}\n'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


class _Upstream(asyncio.Protocol):
    """One connection: answer each complete request with the fixed response."""

    __slots__ = ("_parser", "_transport")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(_RESPONSE)


async def _serve(port: int, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=4096, ssl=tls)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", help="the key of --tls-cert (PEM)")
    args = parser.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    uvloop.run(_serve(args.port, tls))


if __name__ == "__main__":
    main()
