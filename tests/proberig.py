"""An upstream that shows the proxy what it received: methods, paths, headers, bodies (sink and
source of any size, length-delimited or chunked), and a WebSocket echo. For the forwarding tests."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

MB = 1024 * 1024


class ProbeUpstream:
    """An upstream that shows the proxy's effects: echo, sink, source, slow, odd headers."""

    def __init__(self) -> None:
        self.requests = 0
        self.peers: set[tuple[str, int]] = set()
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/sink", self.sink)
        app.router.add_get("/source", self.source)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/hop", self.hop)
        app.router.add_get("/ws", self.ws)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.app = app

    def _count(self, request: web.Request) -> None:
        self.requests += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((peer[0], peer[1]))

    async def echo(self, request: web.Request) -> web.Response:
        self._count(request)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body.decode(),
            }
        )

    async def sink(self, request: web.Request) -> web.Response:
        self._count(request)
        size = 0
        async for chunk in request.content.iter_chunked(MB):
            size += len(chunk)
        return web.json_response({"bytes": size, "chunked": "Transfer-Encoding" in request.headers})

    async def source(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        total = int(request.query["bytes"])
        response = web.StreamResponse()
        if request.query.get("length") == "1":
            response.content_length = total
        await response.prepare(request)
        block = b"x" * (256 * 1024)
        sent = 0
        while sent < total:
            piece = block[: min(len(block), total - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        self._count(request)
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="late")

    async def hop(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.Response(
            text="hop",
            headers={
                "Connection": "keep-alive, X-Resp-Private",
                "X-Resp-Private": "secret",
                "Keep-Alive": "timeout=5",
                "X-Resp-Public": "ok",
                "Proxy-Authenticate": "Basic",
            },
        )

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self._count(request)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for msg in socket:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await socket.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await socket.send_bytes(msg.data[::-1])
        return socket
