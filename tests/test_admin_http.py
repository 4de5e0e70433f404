"""The admin API's HTTP layer as the service runs it: requests aiohttp cannot parse get problem
documents that quote nothing of the request, and the access log never holds a secret."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from conftest import Stores
from test_admin_helpers import admin_settings

from admin_api.server import MAX_FIELD_BYTES
from admin_api.service import AdminService
from gatekeeper.runtime.admin_tokens import mint_token

_SECRET = "eyJzZWNyZXQiOiJkby1ub3QtZWNobyJ9"


@pytest.fixture
async def service(stores: Stores, tmp_path: Path) -> AsyncIterator[AdminService]:
    running = AdminService(admin_settings(stores.pg_url, stores.redis_url, data_dir=tmp_path))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a fresh connection; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # the server closes after an error
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


def _assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    assert status == expected, body
    assert headers["content-type"].startswith("application/problem+json")
    document = json.loads(body)
    assert document["status"] == expected and document["title"] and document["detail"]


async def test_oversized_header_is_a_431_problem_that_echoes_nothing(
    service: AdminService, caplog: pytest.LogCaptureFixture
) -> None:
    token = _SECRET + "A" * (MAX_FIELD_BYTES + 100)
    raw = (
        f"GET /api/t1/devices HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await _exchange(service.port, raw)
    _assert_problem(status, headers, body, 431)
    assert _SECRET.encode() not in body and b"AAAA" not in body
    assert _SECRET not in caplog.text


async def test_invalid_header_is_a_400_problem_that_echoes_nothing(
    service: AdminService, caplog: pytest.LogCaptureFixture
) -> None:
    raw = f"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Api-Key: {_SECRET}\x01\r\n\r\n".encode()
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await _exchange(service.port, raw)
    _assert_problem(status, headers, body, 400)
    assert _SECRET.encode() not in body
    assert _SECRET not in caplog.text


async def test_a_long_token_within_the_verifiers_limit_reaches_the_api(
    service: AdminService,
) -> None:
    """Over aiohttp's default 8 KiB header limit, under the verifier's 16 KiB: the API's 401."""
    token = "e30." + "A" * 12_000 + ".x"
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{service.port}/api/t1/devices",
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 401
        assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "query",
    [
        "access_token={s}",
        "token={s}",
        "api_key={s}",
        "X-Api-Key={s}",
        "{s}",
        "{s}={s}",
        "q=x&limit=5&jwt={s}&blocked=all",
    ],
)
async def test_access_log_never_holds_a_query_secret(
    service: AdminService, tenant: str, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    settings = admin_settings("postgresql://unused", "redis://unused")
    token = mint_token(settings, tenant, ["Device.Read"])
    url = f"http://127.0.0.1:{service.port}/api/{tenant}/devices?{query.format(s=_SECRET)}"
    with caplog.at_level(logging.INFO):
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
        ):
            await response.read()
        for _ in range(50):  # the line is written just after the response is sent
            if any(r.name.endswith(".access") for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name.endswith(".access")]
    assert lines, "no access log line"
    assert f"/api/{tenant}/devices?" in lines[0]
    assert _SECRET not in caplog.text
    if "limit" in query:  # the API's own harmless values stay visible
        assert "limit=5" in lines[0] and "blocked=all" in lines[0] and "q=***" in lines[0]
