"""TLS on the proxy's and the admin API's ports, with a throwaway CA made here: requests over
https, X-Forwarded-Proto says so, and SIGHUP swaps the certificate without dropping the
connections already open."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from conftest import Stores, edge_settings
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_admin_helpers import admin_settings

from admin_api.service import AdminService
from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.admin_tokens import mint_token
from gatekeeper.runtime.embedded import free_port
from gatekeeper.settings import Settings, SettingsError

pytestmark = pytest.mark.timeout(90)


@dataclass
class ThrowawayCA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path

    def issue(self, folder: Path, serial: int) -> tuple[Path, Path]:
        """A certificate for 127.0.0.1 with ``serial``, written as cert and key files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatekeeper")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = folder / "tls.crt", folder / "tls.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pem))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatekeeper test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ThrowawayCA(key, cert, pem)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: str
) -> int:
    """Send one request on an open connection; its status (the body is read and dropped)."""
    writer.write(request.encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    return int(head.split()[1])


async def _served_serial(port: int, context: ssl.SSLContext) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def test_the_proxy_serves_https_and_reloads_its_certificate(
    ca: ThrowawayCA, stores: Stores, echo_upstream: str, tmp_path: Path, tenant: str
) -> None:
    cert, key = ca.issue(tmp_path, serial=1001)
    edge = EdgeServer(
        edge_settings(stores, echo_upstream, tls_cert_file=str(cert), tls_key_file=str(key))
    )
    await edge.start()
    try:
        await edge.wait_ready()
        connector = aiohttp.TCPConnector(ssl=ca.client_context())
        async with aiohttp.ClientSession(connector=connector) as http:
            url = f"https://127.0.0.1:{edge.proxy_port}/api/{tenant}/items"
            async with http.get(url, headers={"X-Device-Id": "d1"}) as response:
                assert response.status == 200
                echoed = await response.json()
            assert echoed["headers"]["X-Forwarded-Proto"] == "https"
        assert await _served_serial(edge.proxy_port, ca.client_context()) == 1001

        # A keep-alive connection opened before the reload, used on both sides of it.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", edge.proxy_port, ssl=ca.client_context()
        )
        request = f"GET /api/{tenant}/items HTTP/1.1\r\nHost: x\r\nX-Device-Id: d1\r\n\r\n"
        assert await _exchange(reader, writer, request) == 200
        ca.issue(tmp_path, serial=1002)  # a renewed certificate, same files
        edge.reload_tls()
        assert await _served_serial(edge.proxy_port, ca.client_context()) == 1002
        assert await _exchange(reader, writer, request) == 200
        writer.close()
        # Plain HTTP on a TLS port is refused by the handshake, not served.
        with pytest.raises((aiohttp.ClientError, ConnectionError)):
            async with (
                aiohttp.ClientSession() as plain,
                plain.get(f"http://127.0.0.1:{edge.proxy_port}/api/{tenant}/items") as answer,
            ):
                await answer.read()
    finally:
        await edge.stop()


async def test_the_admin_api_serves_https(ca: ThrowawayCA, stores: Stores, tmp_path: Path) -> None:
    cert, key = ca.issue(tmp_path, serial=2001)
    settings = admin_settings(
        stores.pg_url, stores.redis_url, tls_cert_file=str(cert), tls_key_file=str(key)
    )
    service = AdminService(settings)
    await service.start()
    try:
        connector = aiohttp.TCPConnector(ssl=ca.client_context())
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(f"https://127.0.0.1:{service.port}/readyz") as response,
        ):
            assert response.status == 200
        assert await _served_serial(service.port, ca.client_context()) == 2001
    finally:
        await service.stop()


def test_unusable_tls_files_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    done = subprocess.run(
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
            "http://127.0.0.1:1",
            "--proxy-port",
            str(free_port()),
        ],
        env=env
        | {
            "GATEKEEPER_TLS_CERT_FILE": str(tmp_path / "tls.crt"),
            "GATEKEEPER_TLS_KEY_FILE": str(tmp_path / "tls.key"),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"gatekeeper: tls_cert_file {tmp_path / 'tls.crt'} / tls_key_file ")


def test_a_cert_without_its_key_is_refused() -> None:
    with pytest.raises(SettingsError, match="set both or neither"):
        Settings(tls_cert_file="/x.crt")


async def test_sighup_to_gatekeeper_proxy_reloads_every_worker(
    ca: ThrowawayCA, stores: Stores, echo_upstream: str, tmp_path: Path
) -> None:
    cert, key = ca.issue(tmp_path, serial=3001)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")} | {
        "GATEKEEPER_DATABASE_URL": stores.pg_url,
        "GATEKEEPER_REDIS_URL": stores.redis_url,
        "GATEKEEPER_TLS_CERT_FILE": str(cert),
        "GATEKEEPER_TLS_KEY_FILE": str(key),
    }
    log = (tmp_path / "stderr").open("wb")
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatekeeper",
            "proxy",
            "--workers",
            "2",
            "--upstream",
            echo_upstream,
            "--proxy-port",
            str(port),
            "--metrics-port",
            "0",
        ],
        env=env,
        stderr=log,
    )
    try:
        for _ in range(200):
            try:
                assert await _served_serial(port, ca.client_context()) == 3001
                break
            except OSError:
                await asyncio.sleep(0.05)
        ca.issue(tmp_path, serial=3002)
        proxy.send_signal(signal.SIGHUP)
        # Connections land on either worker: every one must present the new certificate.
        for _ in range(100):
            if {await _served_serial(port, ca.client_context()) for _ in range(8)} == {3002}:
                break
            await asyncio.sleep(0.05)
        assert {await _served_serial(port, ca.client_context()) for _ in range(16)} == {3002}
        assert proxy.poll() is None, "SIGHUP must not stop the proxy"
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(30)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        log.close()


async def test_the_console_over_https(ca: ThrowawayCA, stores: Stores, tmp_path: Path) -> None:
    """The session cookie is Secure, and the console's own calls to the API (on this TLS socket,
    trusting the served certificate) work."""
    cert, key = ca.issue(tmp_path, serial=2002)
    settings = admin_settings(
        stores.pg_url, stores.redis_url, tls_cert_file=str(cert), tls_key_file=str(key)
    )
    service = AdminService(settings)
    await service.start()
    base = f"https://127.0.0.1:{service.port}"
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ca.client_context()),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        ) as http:
            token = mint_token(settings, "tls-tenant", ["Device.Read"])
            async with http.post(
                f"{base}/console/sign-in", data={"token": token}, allow_redirects=False
            ) as response:
                assert response.status == 303
                assert "Secure" in response.headers["Set-Cookie"]
            async with http.get(f"{base}/console/tls-tenant/devices") as response:
                assert response.status == 200
                assert "No devices match." in await response.text()
    finally:
        await service.stop()
