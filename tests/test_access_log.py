"""The proxy's access log (``access_log = off|sampled|all``), its rate-limited upstream failure
lines, and the upstream metrics: responses by status class, client connections, the pool.

The proxy runs in this process; its access log goes to file descriptor 1, which ``capfd``
captures at the descriptor, as a container runtime would read it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from conftest import EdgeFactory
from edgerig import eventually, metric_value, raw_exchange

from gatekeeper import logs
from gatekeeper.edge.server import EdgeServer
from gatekeeper.store import edge_writes as store

pytestmark = pytest.mark.timeout(60)


async def _answer_with_status(request: web.Request) -> web.Response:
    """``/api/<tenant>/status/<code>`` answers ``<code>``; anything else 200."""
    parts = request.path.split("/")
    code = int(parts[4]) if len(parts) > 4 and parts[3] == "status" else 200
    return web.Response(status=code, text="upstream says hello")


@pytest.fixture
async def status_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _answer_with_status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``configure_logging(..., "json", "worker")`` records, without replacing the test
    runner's own log handlers."""
    monkeypatch.setattr(logs, "_current", ("json", "worker"))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _get(session: aiohttp.ClientSession, edge: EdgeServer, path: str, **headers: str) -> int:
    async with session.get(f"http://127.0.0.1:{edge.proxy_port}{path}", headers=headers) as got:
        await got.read()
        return got.status


def _lines(capfd: pytest.CaptureFixture[str], edge: EdgeServer) -> list[dict[str, object]]:
    assert edge.access_log is not None
    edge.access_log.flush()
    out = capfd.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_every_request_is_one_json_line_with_what_happened(
    edge_factory: EdgeFactory,
    status_upstream: str,
    session: aiohttp.ClientSession,
    pg_pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    tenant: str,
    json_logs: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    edge = await edge_factory(upstream=status_upstream, access_log="all")
    await store.set_blocked(pg_pool, redis_client, tenant, "lost-1", True, create=True)

    async def mirrored() -> bool:
        return edge.mirror.denial((tenant, "lost-1")) is not None

    assert await eventually(mirrored)
    capfd.readouterr()
    base = f"/api/{tenant}"
    first = {"X-Device-Id": "ipad-1", "X-Request-Id": "req-1"}
    assert await _get(session, edge, f"{base}/ping?token=s3cret", **first) == 200
    assert await _get(session, edge, f"{base}/x", **{"X-Device-Id": "lost-1"}) == 403
    assert await _get(session, edge, f"{base}/status/503", **{"X-Device-Id": "ipad-1"}) == 503
    assert await _get(session, edge, f"{base}/x", **{"X-Device-Id": "bad id"}) == 400

    lines = _lines(capfd, edge)
    assert [(line["status"], line["outcome"]) for line in lines] == [
        (200, "forwarded"),
        (403, "blocked"),
        (503, "forwarded"),
        (400, "invalid"),
    ]
    ok, blocked, failed, invalid = lines
    assert ok["logger"] == "gatekeeper.access" and ok["process"] == "worker"
    assert str(ok["time"]).endswith("Z") and ok["level"] == "INFO"
    assert ok["path"] == f"{base}/ping"  # the query string is never logged: tokens travel there
    assert "s3cret" not in json.dumps(lines)
    assert ok["request_id"] == "req-1" and ok["method"] == "GET"
    assert (ok["tenant"], ok["device_id"], ok["upstream_status"]) == (tenant, "ipad-1", 200)
    assert isinstance(ok["upstream_ms"], float) and ok["upstream_ms"] >= 0
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] >= ok["upstream_ms"]
    assert ok["bytes_in"] == 0 and isinstance(ok["bytes_out"], int)
    assert ok["bytes_out"] > len("upstream says hello") and ok["client"] == "127.0.0.1"
    assert blocked["device_id"] == "lost-1" and blocked["upstream_status"] is None
    assert blocked["upstream_ms"] is None
    assert failed["upstream_status"] == 503
    assert invalid["device_id"] is None


async def test_sampled_logs_errors_and_denials_always_and_one_success_in_n(
    edge_factory: EdgeFactory,
    status_upstream: str,
    session: aiohttp.ClientSession,
    tenant: str,
    json_logs: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    edge = await edge_factory(upstream=status_upstream, access_log="sampled", access_log_sample=3)
    capfd.readouterr()
    device = {"X-Device-Id": "ipad-1"}
    for n in range(7):
        assert await _get(session, edge, f"/api/{tenant}/ok/{n}", **device) == 200
    assert await _get(session, edge, f"/api/{tenant}/status/500", **device) == 500
    assert await _get(session, edge, f"/api/{tenant}/status/404", **device) == 404
    assert await _get(session, edge, f"/api/{tenant}/x", **{"X-Device-Id": "bad id"}) == 400

    paths = [line["path"] for line in _lines(capfd, edge)]
    # The first success, then every third; the upstream's 404 is a success of the proxy's and
    # falls between samples; the upstream's 500 and the proxy's own 400 are always logged.
    assert paths == [
        f"/api/{tenant}/ok/0",
        f"/api/{tenant}/ok/3",
        f"/api/{tenant}/ok/6",
        f"/api/{tenant}/status/500",
        f"/api/{tenant}/x",
    ]


async def test_off_writes_no_access_line(
    edge_factory: EdgeFactory,
    session: aiohttp.ClientSession,
    tenant: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    edge = await edge_factory(access_log="off")
    capfd.readouterr()
    assert await _get(session, edge, f"/api/{tenant}/x", **{"X-Device-Id": "bad id"}) == 400
    assert await _get(session, edge, f"/api/{tenant}/x", **{"X-Device-Id": "ipad-1"}) == 200
    assert edge.access_log is None
    await asyncio.sleep(0.3)  # past the flush delay a buffered line would have
    assert capfd.readouterr().out == ""


async def test_text_lines_cannot_be_forged_by_what_a_client_sends(
    edge_factory: EdgeFactory, tenant: str, capfd: pytest.CaptureFixture[str]
) -> None:
    edge = await edge_factory(access_log="all")
    capfd.readouterr()
    # A request id that tries to add a field, and a path with a quote and a space in it.
    head = (
        f'GET /api/{tenant}/a%20b"c HTTP/1.1\r\nHost: x\r\nX-Device-Id: ipad-1\r\n'
        "X-Request-Id: r1 status=200\r\nConnection: close\r\n\r\n"
    ).encode()
    await raw_exchange(edge.proxy_port, head)
    assert edge.access_log is not None
    edge.access_log.flush()
    (line,) = capfd.readouterr().out.splitlines()
    assert " worker[" in line or " gatekeeper " in line
    assert " INFO gatekeeper.access: " in line
    fields = line.split(": ", 1)[1]
    assert fields.count(" status=") == 1
    assert "request_id=" in fields


async def test_an_unreachable_upstream_is_logged_once_not_per_request(
    edge_factory: EdgeFactory,
    session: aiohttp.ClientSession,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    edge = await edge_factory(upstream="http://127.0.0.1:9", access_log="off")  # discard port
    with caplog.at_level(logging.WARNING, logger="gatekeeper.edge.relay"):
        for _ in range(5):
            assert await _get(session, edge, f"/api/{tenant}/x", **{"X-Device-Id": "d"}) == 502
    lines = [r.getMessage() for r in caplog.records if r.name == "gatekeeper.edge.relay"]
    assert len(lines) == 1, lines
    assert "upstream 127.0.0.1:9 failed" in lines[0] and "answering 502" in lines[0]


async def test_upstream_responses_are_counted_by_status_class(
    edge_factory: EdgeFactory,
    status_upstream: str,
    session: aiohttp.ClientSession,
    tenant: str,
) -> None:
    edge = await edge_factory(upstream=status_upstream, access_log="off")
    port = edge.metrics_port
    name = "gatekeeper_upstream_responses_total"
    before = {
        c: await metric_value(session, port, name, {"code_class": c}) or 0.0 for c in ("2xx", "5xx")
    }
    device = {"X-Device-Id": "ipad-1"}
    for path in ("ok", "status/502", "status/500", "ok", "ok"):
        await _get(session, edge, f"/api/{tenant}/{path}", **device)
    assert await metric_value(session, port, name, {"code_class": "2xx"}) == before["2xx"] + 3
    assert await metric_value(session, port, name, {"code_class": "5xx"}) == before["5xx"] + 2


async def test_connection_gauges_show_open_clients_and_the_pool(
    edge_factory: EdgeFactory, session: aiohttp.ClientSession, tenant: str
) -> None:
    edge = await edge_factory(access_log="off")
    port = edge.metrics_port
    assert await _get(session, edge, f"/api/{tenant}/x", **{"X-Device-Id": "d"}) == 200

    async def settled() -> bool:
        clients = await metric_value(session, port, "gatekeeper_client_connections")
        idle = await metric_value(
            session, port, "gatekeeper_upstream_connections", {"state": "idle"}
        )
        return clients is not None and clients >= 1 and idle == 1

    # aiohttp's session keeps its connection to the proxy open; the proxy keeps its upstream
    # connection idle for the next request.
    assert await eventually(settled, 5.0)
    in_use = await metric_value(
        session, port, "gatekeeper_upstream_connections", {"state": "in_use"}
    )
    assert in_use == 0
    assert await metric_value(session, port, "gatekeeper_upstream_pool_waiting") == 0
