"""What an https upstream the proxy must not trust gets: a 502 problem, the upstream_error
outcome, a counted and logged handshake failure, and never the request. Verification is off only
when a setting says so; unusable certificate files stop the start with one line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import EdgeFactory
from edgerig import metric_value
from upstream_tls_rig import CaFiles, TlsUpstreamFactory, ca_files, tls_upstream

from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.embedded import free_port
from gatekeeper.settings import Settings, SettingsError

__all__ = ["ca_files", "tls_upstream"]  # fixtures

pytestmark = pytest.mark.timeout(60)


async def _refused(edge: EdgeServer, path: str, reason: str) -> None:
    """The request through ``edge`` is a 502 problem, and both counters moved by one."""
    outcome = {"outcome": "upstream_error"}
    tls = {"reason": reason}
    async with aiohttp.ClientSession() as http:
        port = edge.metrics_port
        before = await metric_value(http, port, "gatekeeper_requests_total", outcome) or 0.0
        tls_before = await metric_value(http, port, "gatekeeper_upstream_tls_errors_total", tls)
        assert tls_before is not None  # present (at 0) before any failure, for alerts
        async with http.get(
            f"http://127.0.0.1:{edge.proxy_port}{path}", headers={"X-Device-Id": "tls-probe"}
        ) as response:
            assert response.status == 502
            assert response.content_type == "application/problem+json"
            assert (await response.json())["title"] == "Bad gateway"
        assert await metric_value(http, port, "gatekeeper_requests_total", outcome) == before + 1
        assert (
            await metric_value(http, port, "gatekeeper_upstream_tls_errors_total", tls)
            == tls_before + 1
        )


async def test_an_untrusted_certificate_is_refused_counted_and_logged(
    edge_factory: EdgeFactory,
    tls_upstream: TlsUpstreamFactory,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = await tls_upstream()
    # No CA bundle: the system's CAs, which do not include the throwaway one.
    edge = await edge_factory(upstream=upstream.url)
    with caplog.at_level(logging.WARNING, "gatekeeper.edge.upstream.tls"):
        await _refused(edge, f"/api/{tenant}/secret", "untrusted")
    assert upstream.client_ports == []  # the request never reached it
    (line,) = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert f"with {upstream.url.removeprefix('https://')}" in line
    assert "untrusted" in line and "upstream_tls_ca_file" in line


async def test_a_certificate_for_another_name_is_refused(
    edge_factory: EdgeFactory,
    tls_upstream: TlsUpstreamFactory,
    ca_files: CaFiles,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = await tls_upstream(("other.example",))
    edge = await edge_factory(upstream=upstream.url, upstream_tls_ca_file=str(ca_files.bundle))
    with caplog.at_level(logging.WARNING, "gatekeeper.edge.upstream.tls"):
        await _refused(edge, f"/api/{tenant}/x", "name_mismatch")
        # Throttled: a second failure right after is counted, not logged again.
        await _refused(edge, f"/api/{tenant}/x", "name_mismatch")
    assert upstream.client_ports == []
    (line,) = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert "name_mismatch" in line and "upstream_tls_server_name" in line

    # A trusted certificate for another name is no better than an untrusted one: the same
    # upstream is refused by a CA bundle that does not hold its CA either.
    (ca_files.folder / "other").mkdir()
    stranger = CaFiles(ca_files.folder / "other")
    stranger_edge = await edge_factory(
        upstream=upstream.url, upstream_tls_ca_file=str(stranger.bundle)
    )
    await _refused(stranger_edge, f"/api/{tenant}/y", "untrusted")


async def test_verification_is_off_only_when_the_setting_says_so(
    edge_factory: EdgeFactory,
    tls_upstream: TlsUpstreamFactory,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert Settings().upstream_tls_verify is True
    upstream = await tls_upstream(("other.example",))  # untrusted and for another name
    with caplog.at_level(logging.WARNING, "gatekeeper.edge.server"):
        edge = await edge_factory(upstream=upstream.url, upstream_tls_verify=False)
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/ok",
            headers={"X-Device-Id": "tls-probe"},
        ) as response,
    ):
        assert response.status == 200


def test_upstream_tls_settings_are_checked() -> None:
    assert Settings(upstream="https://api.example").upstream == "https://api.example"
    env = {"GATEKEEPER_UPSTREAM": "https://api.example", "GATEKEEPER_UPSTREAM_TLS_VERIFY": "false"}
    assert Settings.load(environ=env).upstream_tls_verify is False
    with pytest.raises(SettingsError, match="http:// or https://"):
        Settings(upstream="ftp://api.example")
    # On a plain-http upstream a TLS setting would silently do nothing: refused instead.
    with pytest.raises(SettingsError, match="upstream_tls_ca_file apply to an https://"):
        Settings(upstream="http://api.example", upstream_tls_ca_file="/ca.pem")
    with pytest.raises(SettingsError, match="upstream_tls_verify apply to an https://"):
        Settings(upstream="http://api.example", upstream_tls_verify=False)
    with pytest.raises(SettingsError, match="set both or neither"):
        Settings(upstream="https://api.example", upstream_tls_cert_file="/client.crt")


def _start_proxy(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gatekeeper",
            "proxy",
            "--database-url",
            "postgresql://app@127.0.0.1:1/gk",
            "--redis-url",
            "redis://127.0.0.1:1/0",
            "--upstream",
            "https://127.0.0.1:1",
            "--proxy-port",
            str(free_port()),
        ],
        env=env | env_extra,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_unusable_upstream_tls_files_stop_the_start_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    done = _start_proxy({"GATEKEEPER_UPSTREAM_TLS_CA_FILE": str(missing)})
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line == f"gatekeeper: upstream_tls_ca_file {missing}: No such file or directory"

    (tmp_path / "client.crt").write_text("not a certificate")
    (tmp_path / "client.key").write_text("not a key")
    done = _start_proxy(
        {
            "GATEKEEPER_UPSTREAM_TLS_CERT_FILE": str(tmp_path / "client.crt"),
            "GATEKEEPER_UPSTREAM_TLS_KEY_FILE": str(tmp_path / "client.key"),
        }
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"gatekeeper: upstream_tls_cert_file {tmp_path / 'client.crt'} / ")
