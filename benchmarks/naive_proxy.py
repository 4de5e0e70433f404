"""The baseline: the simplest correct aiohttp reverse proxy.

An aiohttp server and one shared ``ClientSession`` (``auto_decompress=False``), access log off,
uvloop; hop-by-hop headers dropped both ways. No blocklist, no recording, no metrics: the
gatekeeper is compared to this to show what its own hot path costs. Run it as
``python -m benchmarks.naive_proxy --port P --upstream http://127.0.0.1:U``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["create_app", "main"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _forwardable(source: Mapping[str, str] | CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The end-to-end headers of ``source``: hop-by-hop ones and those named in Connection go."""
    named = {
        token.strip().lower()
        for value in (
            source.getall("Connection", [])
            if isinstance(source, CIMultiDictProxy)
            else [source.get("Connection", "")]
        )
        for token in value.split(",")
    }
    return CIMultiDict(
        (k, v) for k, v in source.items() if k.lower() not in _HOP_BY_HOP and k.lower() not in named
    )


async def _proxy(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    body = await request.read()
    async with session.request(
        request.method,
        request.app[UPSTREAM] + request.path_qs,
        headers=_forwardable(request.headers),
        data=body or None,
        allow_redirects=False,
    ) as upstream:
        payload = await upstream.read()
        return web.Response(
            status=upstream.status, headers=_forwardable(upstream.headers), body=payload
        )


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=None)
    app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    yield
    await app[SESSION].close()


def create_app(upstream: str) -> web.Application:
    """The naive proxy forwarding everything to ``upstream`` (``http://host:port``)."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(
        create_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
