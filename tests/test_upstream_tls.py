"""``https://`` upstreams through the proxy's own pool, against a throwaway CA made here: the CA
bundle setting, SNI (the URL's host, or the override), a client certificate for an upstream that
requires one, keep-alive reuse of TLS connections, bodies both ways, and WebSocket tunnels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import EdgeFactory, Stores
from edgerig import ProxyProcess
from upstream_tls_rig import CaFiles, TlsUpstreamFactory, ca_files, tls_upstream

from gatekeeper.edge.upstream.pool import UpstreamPool
from gatekeeper.edge.upstream.tls import UpstreamTls, upstream_tls
from gatekeeper.settings import Settings

__all__ = ["ca_files", "tls_upstream"]  # fixtures

pytestmark = pytest.mark.timeout(60)


async def _get(port: int, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            kwargs.pop("method", "GET"),
            f"http://127.0.0.1:{port}{path}",
            headers={"X-Device-Id": "tls-probe"},
            **kwargs,
        ) as response,
    ):
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_forwards_to_an_https_upstream_trusted_by_the_ca_bundle(
    edge_factory: EdgeFactory, tls_upstream: TlsUpstreamFactory, ca_files: CaFiles, tenant: str
) -> None:
    upstream = await tls_upstream()
    edge = await edge_factory(upstream=upstream.url, upstream_tls_ca_file=str(ca_files.bundle))

    status, echoed = await _get(edge.proxy_port, f"/api/{tenant}/items?a=1")
    assert status == 200
    assert echoed["path"] == f"/api/{tenant}/items?a=1"
    # Host is the upstream URL's authority; the client's own hop was plain http.
    assert echoed["headers"]["Host"] == upstream.url.removeprefix("https://")
    assert echoed["headers"]["X-Forwarded-Proto"] == "http"
    assert echoed["client_cn"] is None  # no client certificate unless configured

    body = "x" * 1_000_000  # more than a TLS record and the pool's high-water mark
    status, echoed = await _get(edge.proxy_port, f"/api/{tenant}/upload", method="POST", data=body)
    assert (status, echoed["body"]) == (200, body)


async def test_keep_alive_connections_are_reused_over_tls(
    edge_factory: EdgeFactory, tls_upstream: TlsUpstreamFactory, ca_files: CaFiles, tenant: str
) -> None:
    upstream = await tls_upstream()
    edge = await edge_factory(upstream=upstream.url, upstream_tls_ca_file=str(ca_files.bundle))
    for _ in range(5):
        assert (await _get(edge.proxy_port, f"/api/{tenant}/again"))[0] == 200
    # Five requests, one after another: one connection, so one handshake.
    assert len(upstream.client_ports) == 5
    assert len(set(upstream.client_ports)) == 1
    assert upstream.sni == [None]  # one handshake; an address is never sent as SNI


async def test_sni_is_the_url_host_unless_overridden(
    edge_factory: EdgeFactory, tls_upstream: TlsUpstreamFactory, ca_files: CaFiles, tenant: str
) -> None:
    by_name = await tls_upstream(("localhost",))
    edge = await edge_factory(
        upstream=by_name.url.replace("127.0.0.1", "localhost"),
        upstream_tls_ca_file=str(ca_files.bundle),
    )
    assert (await _get(edge.proxy_port, f"/api/{tenant}/a"))[0] == 200
    assert by_name.sni == ["localhost"]

    # Reached by address, its certificate names only api.internal: the override is the name
    # sent and the name checked; the Host header still comes from the URL.
    internal = await tls_upstream(("api.internal",))
    edge = await edge_factory(
        upstream=internal.url,
        upstream_tls_ca_file=str(ca_files.bundle),
        upstream_tls_server_name="api.internal",
    )
    status, echoed = await _get(edge.proxy_port, f"/api/{tenant}/b")
    assert status == 200
    assert internal.sni == ["api.internal"]
    assert echoed["headers"]["Host"] == internal.url.removeprefix("https://")


async def test_a_client_certificate_is_presented_when_configured(
    edge_factory: EdgeFactory, tls_upstream: TlsUpstreamFactory, ca_files: CaFiles, tenant: str
) -> None:
    upstream = await tls_upstream(client_ca=True)
    cert, key = ca_files.client_files()
    edge = await edge_factory(
        upstream=upstream.url,
        upstream_tls_ca_file=str(ca_files.bundle),
        upstream_tls_cert_file=str(cert),
        upstream_tls_key_file=str(key),
    )
    status, echoed = await _get(edge.proxy_port, f"/api/{tenant}/mtls")
    assert status == 200
    assert echoed["client_cn"] == "gatekeeper-edge"

    # The same upstream refuses a proxy without one: the client gets a 502, not a hang.
    edge = await edge_factory(upstream=upstream.url, upstream_tls_ca_file=str(ca_files.bundle))
    status, answer = await _get(edge.proxy_port, f"/api/{tenant}/mtls")
    assert status == 502
    assert '"title": "Bad gateway"' in answer or '"title":"Bad gateway"' in answer


async def test_a_websocket_is_tunnelled_to_an_https_upstream(
    edge_factory: EdgeFactory, tls_upstream: TlsUpstreamFactory, ca_files: CaFiles, tenant: str
) -> None:
    upstream = await tls_upstream()
    edge = await edge_factory(upstream=upstream.url, upstream_tls_ca_file=str(ca_files.bundle))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"ws://127.0.0.1:{edge.proxy_port}/api/{tenant}/ws",
            headers={"X-Device-Id": "tls-probe"},
        ) as ws,
    ):
        await ws.send_str("hello")
        assert (await ws.receive_str()) == "echo: hello"
        await ws.send_str("again")
        assert (await ws.receive_str()) == "echo: again"


def test_the_host_header_names_the_port_only_when_it_is_not_the_default() -> None:
    tls = upstream_tls(Settings(upstream="https://api.example"))
    assert isinstance(tls, UpstreamTls) and tls.server_name == "api.example"
    assert upstream_tls(Settings(upstream="http://api.example")) is None

    def authority(host: str, port: int, tls: UpstreamTls | None) -> str:
        pool = UpstreamPool(
            host, port, max_connections=1, connect_timeout=1.0, read_timeout=1.0, tls=tls
        )
        return pool.authority

    assert authority("api.example", 443, tls) == "api.example"
    assert authority("api.example", 8443, tls) == "api.example:8443"
    assert authority("api.example", 80, None) == "api.example"
    assert authority("api.example", 443, None) == "api.example:443"  # plain http on 443
    assert authority("::1", 8443, tls) == "[::1]:8443"


async def test_gatekeeper_proxy_workers_use_mutual_tls_upstream_and_stop_cleanly(
    stores: Stores, tls_upstream: TlsUpstreamFactory, ca_files: CaFiles, tenant: str, tmp_path: Path
) -> None:
    """As production runs it: the settings reach each worker (on uvloop, whose TLS transport is
    its own), and a stop with TLS connections in the pool does not wait on them."""
    upstream = await tls_upstream(client_ca=True)
    cert, key = ca_files.client_files()
    proc = ProxyProcess(
        database_url=stores.pg_url,
        redis_url=stores.redis_url,
        upstream=upstream.url,
        log_dir=tmp_path,
        workers=2,
        env={
            "GATEKEEPER_UPSTREAM_TLS_CA_FILE": str(ca_files.bundle),
            "GATEKEEPER_UPSTREAM_TLS_CERT_FILE": str(cert),
            "GATEKEEPER_UPSTREAM_TLS_KEY_FILE": str(key),
        },
    )
    try:
        proc.start()
        async with aiohttp.ClientSession() as http:
            await proc.wait_ready(http)
        for _ in range(4):
            status, echoed = await _get(proc.proxy_port, f"/api/{tenant}/prod")
            assert (status, echoed["client_cn"]) == (200, "gatekeeper-edge")
        proc.terminate()
        assert await proc.wait_exit(10.0) == 0, proc.tail()
    finally:
        await proc.stop()
