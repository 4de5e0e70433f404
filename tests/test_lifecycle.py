"""Start and stop that cannot leak or hang (issue 9).

A port already taken is the commonest start failure: every command must exit at once, non-zero,
with one line naming the port, and leave no process behind. ``EdgeServer.start`` failing half-way
must unwind what it had entered (no task left running, no pool left open), and ``stop()`` must be
safe after a failed start and when called twice.

The commands run as real subprocesses (``python -m gatekeeper``) against the session's stores,
each in a session of its own so that any process it leaves behind can be found by its group.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stores, edge_settings

from admin_api.service import AdminService
from gatekeeper.edge.server import EdgeServer
from gatekeeper.listening import CANNOT_LISTEN, ListenError
from gatekeeper.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# The hang this guards against was forever; the budget covers the interpreter's start and the
# imports on a busy machine (the bind itself fails in milliseconds, ~0.3 s in all on an idle one).
EXIT_WITHIN_SECONDS = 5.0
UPSTREAM = "http://127.0.0.1:9"  # never contacted: the command fails before any request


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other program listens on (a plain socket, as another server would hold it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _free() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _run(*argv: str, env: dict[str, str]) -> tuple[int, str, float]:
    """Run a command to its end (killed with its whole group at 15 s); its exit code, stderr and
    how long it took. Fails if any process of its group outlives it."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=15)
        elapsed = time.monotonic() - started
        # Children (workers, embedded stores) would be in the command's process group.
        deadline = time.monotonic() + 1.0
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _group_alive(proc.pid), "a child process outlived the command"
        return proc.returncode, stderr, elapsed
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.communicate()


def _env(stores: Stores | None, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env["GATEKEEPER_DATA_DIR"] = str(tmp_path / "data")
    if stores is not None:
        env["GATEKEEPER_DATABASE_URL"] = stores.pg_url
        env["GATEKEEPER_REDIS_URL"] = stores.redis_url
    return env


def _assert_refused(result: tuple[int, str, float], port: int) -> None:
    code, stderr, elapsed = result
    lines = stderr.splitlines()
    assert code != 0, stderr
    assert lines and lines[-1] == (
        f"gatekeeper: cannot listen on 127.0.0.1:{port}: address already in use"
    ), stderr
    assert "Traceback" not in stderr, stderr
    assert elapsed < EXIT_WITHIN_SECONDS, f"took {elapsed:.1f} s"


GATEKEEPER = (sys.executable, "-m", "gatekeeper")


@pytest.mark.parametrize("which", ["proxy-port", "metrics-port"])
def test_proxy_exits_when_its_port_is_taken(
    stores: Stores, tmp_path: Path, taken: int, which: str
) -> None:
    ports = {"proxy-port": 0, "metrics-port": 0, which: taken}
    result = _run(
        *GATEKEEPER,
        "proxy",
        "--upstream",
        UPSTREAM,
        *(arg for name, port in ports.items() for arg in (f"--{name}", str(port))),
        env=_env(stores, tmp_path),
    )
    _assert_refused(result, taken)


@pytest.mark.parametrize("which", ["proxy-port", "metrics-port"])
def test_supervisor_exits_before_forking_when_a_port_is_taken(
    stores: Stores, tmp_path: Path, taken: int, which: str
) -> None:
    ports = {"proxy-port": _free(), "metrics-port": 0, which: taken}
    result = _run(
        *GATEKEEPER,
        "proxy",
        "--workers",
        "2",
        "--upstream",
        UPSTREAM,
        *(arg for name, port in ports.items() for arg in (f"--{name}", str(port))),
        env=_env(stores, tmp_path),
    )
    _assert_refused(result, taken)
    assert "worker" not in result[1], "a worker was forked"


def test_worker_that_cannot_listen_exits_with_its_own_code(
    stores: Stores, tmp_path: Path, taken: int
) -> None:
    """The port taken between the supervisor's check and the worker's bind: the worker exits
    with the code that stops its supervisor from starting another."""
    settings = edge_settings(stores, UPSTREAM, proxy_port=taken)
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings.to_mapping()))
    env = _env(stores, tmp_path)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    (tmp_path / "metrics").mkdir()
    code, stderr, elapsed = _run(
        sys.executable,
        "-m",
        "gatekeeper.runtime.worker",
        str(settings_file),
        str(tmp_path / "recorder.sock"),
        env=env,
    )
    assert code == CANNOT_LISTEN, stderr
    assert stderr.splitlines()[-1] == (
        f"gatekeeper worker: cannot listen on 127.0.0.1:{taken}: address already in use"
    )
    assert elapsed < EXIT_WITHIN_SECONDS


def test_supervisor_gives_up_when_its_workers_cannot_listen(stores: Stores, tmp_path: Path) -> None:
    """The port taken after the supervisor's check, before its workers bind (the test binds it
    as soon as the supervisor says it has forked): the command stops and fails, instead of
    replacing workers forever."""
    for _ in range(3):  # the test's bind races the workers'; they rarely win, but may
        port = _free()
        argv = (
            *GATEKEEPER,
            "proxy",
            "--workers",
            "2",
            "--upstream",
            UPSTREAM,
            "--proxy-port",
            str(port),
            "--metrics-port",
            "0",
        )
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=_env(stores, tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        killer = threading.Timer(15, os.killpg, (proc.pid, signal.SIGKILL))
        killer.start()
        try:
            assert proc.stderr is not None
            lines = []
            for line in proc.stderr:
                lines.append(line.rstrip("\n"))
                if "supervisor: 2 workers" in line:
                    break
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue  # a worker was first: try again
                sock.listen()
                started = time.monotonic()
                lines += proc.stderr.read().splitlines()
                code = proc.wait()
                elapsed = time.monotonic() - started
            assert code == 1, lines
            taken_line = f"cannot listen on 127.0.0.1:{port}: address already in use"
            assert f"gatekeeper worker: {taken_line}" in lines
            assert lines[-1] == (
                f"gatekeeper: cannot listen on 127.0.0.1:{port}: "
                "a worker could not bind (see its log)"
            )
            assert elapsed < EXIT_WITHIN_SECONDS
            deadline = time.monotonic() + 1.0
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not _group_alive(proc.pid), "a worker outlived the supervisor"
            return
        finally:
            killer.cancel()
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()
    pytest.fail("the workers bound the port before the test, three times")


def test_admin_exits_when_its_port_is_taken(stores: Stores, tmp_path: Path, taken: int) -> None:
    result = _run(*GATEKEEPER, "admin", "--admin-port", str(taken), env=_env(stores, tmp_path))
    _assert_refused(result, taken)


def test_other_bind_errors_are_named_by_the_os(stores: Stores, tmp_path: Path) -> None:
    """Not only "in use": the reason is the OS's own text, lower-cased (192.0.2.1 is a
    documentation address no interface of this machine has)."""
    port = _free()
    code, stderr, elapsed = _run(
        *GATEKEEPER,
        "admin",
        "--host",
        "192.0.2.1",
        "--admin-port",
        str(port),
        env=_env(stores, tmp_path),
    )
    assert code != 0
    assert stderr.splitlines()[-1] == (
        f"gatekeeper: cannot listen on 192.0.2.1:{port}: cannot assign requested address"
    )
    assert elapsed < EXIT_WITHIN_SECONDS


@pytest.mark.parametrize("which", ["proxy-port", "admin-port", "metrics-port"])
def test_up_exits_before_starting_anything_when_a_port_is_taken(
    tmp_path: Path, taken: int, which: str
) -> None:
    """With the embedded stores (the default): the ports are checked before they start, so no
    PostgreSQL or Valkey is started only to be stopped again, and none is left behind."""
    ports = {"proxy-port": 0, "admin-port": 0, "metrics-port": 0, which: taken}
    result = _run(
        *GATEKEEPER,
        "up",
        "--demo-upstream",
        "--data-dir",
        str(tmp_path / "data"),
        *(arg for name, port in ports.items() for arg in (f"--{name}", str(port))),
        env=_env(None, tmp_path),
    )
    _assert_refused(result, taken)
    assert not (tmp_path / "data" / "postgres").exists()


# --- EdgeServer and AdminService in this process ---------------------------------------------


def _others() -> set[asyncio.Task[object]]:
    """The tasks running besides the test's own."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


@pytest.mark.parametrize("which", ["proxy_port", "metrics_port"])
async def test_edge_start_that_fails_unwinds_everything(
    stores: Stores, taken: int, which: str
) -> None:
    before = _others()
    edge = EdgeServer(edge_settings(stores, UPSTREAM, **{which: taken}))
    with pytest.raises(
        ListenError, match=f"^cannot listen on 127.0.0.1:{taken}: address already in use$"
    ):
        await edge.start()
    # The HTTP server's sweeper is cancelled, not awaited, by its shutdown: one turn ends it.
    await asyncio.sleep(0)
    assert _others() - before == set()
    assert edge._pool is not None and edge._pool.is_closing()
    await edge.stop()  # nothing to do
    await edge.stop()
    assert not edge.draining


async def test_edge_start_stop_and_stop_again(stores: Stores) -> None:
    before = _others()
    edge = EdgeServer(edge_settings(stores, UPSTREAM))
    await edge.start()
    await edge.wait_ready()
    with pytest.raises(RuntimeError, match="already started"):
        await edge.start()
    await edge.stop()
    await edge.stop()  # a no-op, not a crash on closed pools
    await asyncio.sleep(0)
    assert _others() - before == set()
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", edge.proxy_port))


async def test_edge_stop_without_start_is_a_no_op(stores: Stores) -> None:
    await EdgeServer(edge_settings(stores, UPSTREAM)).stop()


async def test_admin_start_that_fails_closes_its_stores(
    stores: Stores, taken: int, tmp_path: Path
) -> None:
    before = _others()
    service = AdminService(
        Settings(
            database_url=stores.pg_url,
            redis_url=stores.redis_url,
            admin_port=taken,
            jwt_secret="lifecycle-secret-0123456789abcdef0123",
            data_dir=tmp_path,
        )
    )
    with pytest.raises(ListenError, match=f"^cannot listen on 127.0.0.1:{taken}: "):
        await service.start()
    await asyncio.sleep(0)
    assert _others() - before == set()
    await service.stop()
