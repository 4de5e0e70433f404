"""Activity through the node's recorder process: workers hand batches over a Unix socket, the
recorder writes them; it is restarted when it dies and stopped last, so nothing acknowledged is
lost. Real Postgres, Redis, processes and sockets throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from conftest import Stores, edge_settings
from edgerig import eventually
from faultproxy import FaultProxy

from gatekeeper.edge.activity.channel import RecorderRefused
from gatekeeper.edge.activity.link import RecorderLink
from gatekeeper.edge.activity.pending import PendingDevice
from gatekeeper.edge.activity.service import RecorderService
from gatekeeper.edge.activity.writer import PostgresWriter
from gatekeeper.edge.server import EdgeServer
from gatekeeper.runtime.supervisor import Supervisor

pytestmark = pytest.mark.timeout(120)

ATTRS = {
    "X-App-Name": "CrewCheck",
    "X-App-Version": "3.2.1",
    "X-OS-Name": "Android",
    "X-OS-Version": "14",
    "X-Device-Manufacturer": "Samsung",
    "X-Device-Model": "SM-T636B",
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: the kernel spreads them over the workers (SO_REUSEPORT).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def send(
    http: aiohttp.ClientSession, port: int, tenant: str, device_id: str, **headers: str
) -> None:
    async with http.get(
        f"http://127.0.0.1:{port}/api/{tenant}/items",
        headers={"X-Device-Id": device_id, **ATTRS, **headers},
    ) as response:
        assert response.status == 200
        await response.read()


async def recorded(pool: asyncpg.Pool, tenant: str) -> set[str]:
    rows = await pool.fetch("SELECT device_id FROM devices WHERE tenant_id = $1", tenant)
    return {row[0] for row in rows}


async def all_recorded(pool: asyncpg.Pool, tenant: str, devices: set[str], within: float) -> bool:
    async def check() -> bool:
        return devices <= await recorded(pool, tenant)

    return await eventually(check, within, interval=0.05)


async def metrics_text(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
async def supervisor(stores: Stores, echo_upstream: str) -> AsyncIterator[Supervisor]:
    running = Supervisor(edge_settings(stores, echo_upstream, workers=2))
    await running.start()
    try:
        await running.wait_ready()
        yield running
    finally:
        await running.stop()


async def test_two_workers_activity_reaches_postgres_through_the_recorder(
    supervisor: Supervisor, http: aiohttp.ClientSession, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    port = supervisor.settings.proxy_port
    devices = {f"d{i:03d}" for i in range(60)}
    await asyncio.gather(*(send(http, port, tenant, d) for d in devices))
    assert await all_recorded(pg_pool, tenant, devices, 10.0)
    assert supervisor.readiness()["recorder_alive"]
    text = await metrics_text(supervisor.metrics_port)
    # Written by the recorder process, summed into the node's /metrics with the workers'.
    assert sample(text, "gatekeeper_activity_flushed_total") >= len(devices)
    assert sample(text, 'gatekeeper_store_up{store="postgres"}') == 1
    assert sample(text, "gatekeeper_recorder_up") == 1
    # The recorder's process adds no sample to the workers' minimums.
    assert sample(text, "gatekeeper_ready") == 1
    assert sample(text, 'gatekeeper_store_up{store="redis"}') == 1
    assert sample(text, "gatekeeper_blocklist_last_sync_timestamp_seconds") > 0
    # The node's processes by role, from /proc, at the scrape.
    for role in ("supervisor", "worker", "recorder"):
        assert sample(text, f'gatekeeper_process_resident_memory_bytes{{role="{role}"}}') > 1e6
        assert sample(text, f'gatekeeper_process_open_fds{{role="{role}"}}') > 0
    assert sample(text, 'gatekeeper_process_cpu_seconds_total{role="worker"}') > 0


async def test_idle_workers_still_report_whether_the_recorder_answers(
    supervisor: Supervisor,
) -> None:
    """With no traffic at all the workers hand over empty batches now and then, so
    ``gatekeeper_recorder_up`` says whether the recorder answers, not only that nothing
    was sent."""

    async def up() -> bool:
        return sample(await metrics_text(supervisor.metrics_port), "gatekeeper_recorder_up") == 1

    assert await eventually(up, 5.0, interval=0.1)


async def test_a_recorder_killed_mid_traffic_is_restarted_and_loses_nothing(
    supervisor: Supervisor, http: aiohttp.ClientSession, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    port = supervisor.settings.proxy_port
    assert supervisor.recorder is not None
    first_pid = supervisor.recorder.pid
    assert first_pid is not None
    before = {f"before-{i}" for i in range(20)}
    await asyncio.gather(*(send(http, port, tenant, d) for d in before))
    assert await all_recorded(pg_pool, tenant, before, 10.0)

    os.kill(first_pid, signal.SIGKILL)
    during = set()
    for i in range(40):  # served while the recorder is gone: the workers keep them
        during.add(f"during-{i}")
        await send(http, port, tenant, f"during-{i}")

    async def restarted() -> bool:
        assert supervisor.recorder is not None
        return supervisor.recorder.pid != first_pid and supervisor.readiness()["recorder_alive"]

    assert await eventually(restarted, 10.0)
    after = {f"after-{i}" for i in range(20)}
    await asyncio.gather(*(send(http, port, tenant, d) for d in after))
    assert await all_recorded(pg_pool, tenant, before | during | after, 15.0)
    assert supervisor.recorder.restarts == 1


async def test_a_recorder_that_cannot_be_started_at_once_is_started_later(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first restart fails as a fork does when the system is out of processes; the watch
    tries again rather than ending (before, it ended, and no recorder ran again)."""
    recorder = supervisor.recorder
    assert recorder is not None and recorder.pid is not None
    first_pid, spawn = recorder.pid, recorder._spawn
    failures: list[int] = []

    def fails_once() -> None:
        if not failures:
            failures.append(1)
            raise BlockingIOError(11, "Resource temporarily unavailable")
        spawn()

    monkeypatch.setattr(recorder, "_spawn", fails_once)
    os.kill(first_pid, signal.SIGKILL)

    async def restarted() -> bool:
        return recorder.pid != first_pid and supervisor.readiness()["recorder_alive"]

    assert await eventually(restarted, 10.0)
    assert failures == [1] and recorder.restarts == 1


async def test_postgres_unreachable_under_traffic_loses_nothing_through_the_recorder(
    stores: Stores,
    echo_upstream: str,
    http: aiohttp.ClientSession,
    pg_pool: asyncpg.Pool,
    tenant: str,
) -> None:
    """Postgres goes away mid-traffic: the proxy keeps forwarding, the recorder answers each
    frame with the failure (so the workers keep their batches), the node's /metrics says so,
    and once Postgres is back every device is written."""
    async with FaultProxy("127.0.0.1", stores.postgres.port) as fault:
        settings = edge_settings(
            stores,
            echo_upstream,
            workers=2,
            database_url=f"postgresql://postgres@127.0.0.1:{fault.port}/postgres",
            flush_retry_max_seconds=0.5,
        )
        running = Supervisor(settings)
        await running.start()
        try:
            await running.wait_ready()
            port = running.settings.proxy_port
            before = {f"before-{i}" for i in range(20)}
            await asyncio.gather(*(send(http, port, tenant, d) for d in before))
            assert await all_recorded(pg_pool, tenant, before, 10.0)
            await fault.cut()
            during = {f"during-{i}" for i in range(40)}
            await asyncio.gather(*(send(http, port, tenant, d) for d in during))

            async def failing() -> bool:
                text = await metrics_text(running.metrics_port)
                return (
                    sample(text, 'gatekeeper_store_up{store="postgres"}') == 0
                    and sample(text, "gatekeeper_activity_flush_errors_total") > 0
                    and sample(text, "gatekeeper_activity_pending") > 0
                )

            assert await eventually(failing, 15.0, interval=0.1)
            assert not during & await recorded(pg_pool, tenant)
            await fault.restore()
            assert await all_recorded(pg_pool, tenant, before | during, 20.0)
        finally:
            await running.stop()


async def test_history_is_exact_across_workers(
    stores: Stores, echo_upstream: str, pg_pool: asyncpg.Pool, tenant: str, tmp_path: Path
) -> None:
    """A change seen by worker A, then another by worker B: one history record each, in
    request-time order, whichever worker's batch the recorder received first."""
    recorder_pool = await asyncpg.create_pool(stores.pg_url, min_size=0, max_size=3)
    service = RecorderService(PostgresWriter(recorder_pool), str(tmp_path / "recorder.sock"))
    await service.start()
    settings = edge_settings(stores, echo_upstream, flush_interval_seconds=0.2)
    workers = [
        EdgeServer(settings, serve_ops=False, recorder_socket=str(tmp_path / "recorder.sock"))
        for _ in range(2)
    ]
    try:
        for worker in workers:
            await worker.start()
            await worker.wait_ready()
        async with aiohttp.ClientSession() as http:
            for round_ in range(3):
                device = f"dev-{round_}"
                await send(http, workers[0].proxy_port, tenant, device, **{"X-App-Version": "1"})
                await asyncio.sleep(0.02)
                await send(http, workers[1].proxy_port, tenant, device, **{"X-App-Version": "2"})
                await asyncio.sleep(0.02)
                await send(http, workers[0].proxy_port, tenant, device, **{"X-App-Version": "3"})
        devices = {f"dev-{i}" for i in range(3)}
        assert await all_recorded(pg_pool, tenant, devices, 5.0)
        await asyncio.sleep(0.5)  # a late batch would show as a missing or reordered record
        for device in sorted(devices):
            rows = await pg_pool.fetch(
                "SELECT current->>'applicationVersion' FROM device_history"
                " WHERE tenant_id = $1 AND device_id = $2 ORDER BY recorded_at, id",
                tenant,
                device,
            )
            assert [row[0] for row in rows] == ["1", "2", "3"], device
            stored = await pg_pool.fetchval(
                "SELECT application_version FROM devices_with_activity"
                " WHERE tenant_id = $1 AND device_id = $2",
                tenant,
                device,
            )
            assert stored == "3"
    finally:
        for worker in workers:
            await worker.stop()
        await service.stop(time.monotonic() + 5)
        await recorder_pool.close()


async def test_sigterm_writes_everything_the_workers_held(
    stores: Stores, echo_upstream: str, pg_pool: asyncpg.Pool, tenant: str, tmp_path: Path
) -> None:
    """``gatekeeper proxy --workers 2`` with a flush interval far longer than the test: every
    device it answered is written by the recorder after SIGTERM, before the command exits."""
    env = dict(
        os.environ,
        GATEKEEPER_DATABASE_URL=stores.pg_url,
        GATEKEEPER_REDIS_URL=stores.redis_url,
        GATEKEEPER_FLUSH_INTERVAL_SECONDS="3600",
    )
    proxy_port, metrics_port = _free_port(), _free_port()
    log = (tmp_path / "stderr").open("wb")
    command = subprocess.Popen(
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
            str(proxy_port),
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        stderr=log,
    )
    devices = {f"held-{i:03d}" for i in range(80)}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            deadline = time.monotonic() + 30
            while True:  # every worker ready, not just the one a probe happens to reach
                try:
                    async with http.get(f"http://127.0.0.1:{metrics_port}/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the proxy never became ready"
                await asyncio.sleep(0.1)
            await asyncio.gather(*(send(http, proxy_port, tenant, d) for d in devices))
        assert not devices & await recorded(pg_pool, tenant), "written before the stop"
        command.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while command.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        if command.poll() is None:
            command.kill()
        command.wait()
        log.close()
    assert command.returncode == 0, (tmp_path / "stderr").read_text()
    assert devices <= await recorded(pg_pool, tenant)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class _HungWriter:
    """A Postgres that never answers."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def write(self, _batch: object, _uses: object) -> None:
        self.entered.set()
        await asyncio.Event().wait()


async def test_a_stop_past_its_deadline_answers_every_frame_with_the_failure(
    tmp_path: Path,
) -> None:
    """A write that hangs through the stop's deadline: the frame is answered as not written
    (its worker keeps the batch), and the stop returns."""
    writer = _HungWriter()
    path = str(tmp_path / "recorder.sock")
    service = RecorderService(writer, path)
    await service.start()
    link = RecorderLink(path)
    entry = PendingDevice(("A", "1", None, None, None, None), time.time(), False, True)
    sent = asyncio.create_task(link.write({("t", "d"): entry}, {}))
    await asyncio.wait_for(writer.entered.wait(), 5)
    started = time.monotonic()
    await service.stop(started + 0.3)
    assert time.monotonic() - started < 2.0
    with pytest.raises(RecorderRefused, match="recorder stopping"):
        await asyncio.wait_for(sent, 2)
    link.close()
