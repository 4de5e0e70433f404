"""WebSocket upgrades through the proxy: both legs are aiohttp WebSockets, messages are piped.

Upgrades are rare and long-lived, so this path favours plain, correct code over speed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp
from aiohttp import web

from gatekeeper.forward import HOP_BY_HOP
from gatekeeper.problem import problem_response

__all__ = ["proxy_websocket"]

_SKIPPED = {h.decode() for h in HOP_BY_HOP} | {
    "host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-accept", "content-length",
}


async def _pipe(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    async for msg in source:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.PING:
            await sink.ping(msg.data)
        else:
            break
    await sink.close()


async def proxy_websocket(request: web.BaseRequest, upstream_url: str,
                          on_connected: Callable[[], None]) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIPPED}
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                 if p.strip()]
    headers.pop("Sec-WebSocket-Protocol", None)
    headers["X-Forwarded-For"] = request.remote or ""
    session = aiohttp.ClientSession(auto_decompress=False)
    try:
        try:
            upstream = await session.ws_connect(upstream_url + request.raw_path, headers=headers,
                                                protocols=protocols, autoping=False)
        except (aiohttp.ClientError, OSError):
            return problem_response(502, "Bad gateway", "The upstream refused the WebSocket.")
        on_connected()
        client = web.WebSocketResponse(protocols=protocols, autoping=False)
        await client.prepare(request)
        tasks = [asyncio.ensure_future(_pipe(client, upstream)),
                 asyncio.ensure_future(_pipe(upstream, client))]
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await upstream.close()
        await client.close()
        return client
    finally:
        await session.close()
