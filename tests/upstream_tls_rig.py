"""The rig for the https-upstream tests: a throwaway CA (trustme) and an upstream serving TLS
with one of its certificates, which records what the proxy's side of each handshake showed
(the SNI name, the client certificate) and which connection each request came on.

Everything runs real servers on loopback; nothing is mocked.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import WSMsgType, web

__all__ = ["CaFiles", "TlsUpstream", "TlsUpstreamFactory"]


class CaFiles:
    """A throwaway CA and the PEM files the proxy's settings name."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.folder = folder
        self.bundle = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.bundle))

    def client_files(self) -> tuple[Path, Path]:
        """A client certificate (CN gatekeeper-edge) and its key, as two PEM files."""
        issued = self.ca.issue_cert("gatekeeper-edge.example", common_name="gatekeeper-edge")
        cert, key = self.folder / "client.crt", self.folder / "client.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key


class TlsUpstream:
    """An upstream serving TLS for ``names`` (a certificate of ``ca``); echoes what it saw."""

    def __init__(self, ca: trustme.CA, names: tuple[str, ...], client_ca: bool) -> None:
        self.sni: list[str | None] = []
        self.client_ports: list[int] = []
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(self.context)
        if client_ca:
            # The mTLS upstream: no client certificate signed by the CA, no connection.
            ca.configure_trust(self.context)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.sni_callback = self._on_sni
        self._runner: web.AppRunner | None = None
        self.url = ""

    def _on_sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.client_ports.append(request.transport.get_extra_info("peername")[1])
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        peer = request.transport.get_extra_info("peercert") or {}
        subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
        return web.json_response(
            {
                "path": request.path_qs,
                "headers": dict(request.headers),
                "client_cn": subject.get("commonName"),
                "body": (await request.read()).decode(),
            }
        )

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"echo: {message.data}")
        return ws

    async def start(self) -> TlsUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.context).start()
        self.url = f"https://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


TlsUpstreamFactory = Callable[..., Awaitable[TlsUpstream]]


@pytest.fixture
def ca_files(tmp_path: Path) -> CaFiles:
    return CaFiles(tmp_path)


@pytest.fixture
async def tls_upstream(ca_files: CaFiles) -> AsyncIterator[TlsUpstreamFactory]:
    """Starts TLS upstreams: ``names`` its certificate is for (default 127.0.0.1),
    ``client_ca`` to require a client certificate from the test CA."""
    started: list[TlsUpstream] = []

    async def start(
        names: tuple[str, ...] = ("127.0.0.1",),
        *,
        client_ca: bool = False,
        ca: CaFiles | None = None,
    ) -> TlsUpstream:
        upstream = await TlsUpstream((ca or ca_files).ca, names, client_ca).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.stop()
