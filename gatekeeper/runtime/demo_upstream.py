"""A small built-in upstream for demos and tests: echoes what it received as JSON.

Not a product surface: ``gatekeeper up --demo-upstream`` starts it so the stack works end to end
with nothing else installed.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["create_demo_upstream"]


async def _echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == web.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": dict(request.headers),
            "bodyBytes": size,
        }
    )


def create_demo_upstream() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app
