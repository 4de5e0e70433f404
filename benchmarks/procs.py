"""Child processes of the harness: start them pinned to a core, wait for them, always stop them.

Every server the harness starts listens on 127.0.0.1 and is owned by a :class:`Child`, which is
a context manager: leaving the ``with`` block stops the process (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "Child",
    "CpuPlan",
    "HarnessError",
    "free_port",
    "plan_cpus",
    "python_module",
    "wait_http_ok",
    "wait_port",
]

HOST = "127.0.0.1"


class HarnessError(RuntimeError):
    """A benchmark component could not be started or measured."""


def free_port() -> int:
    """A TCP port free right now on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class CpuPlan:
    """Which cores the load side (load generator + upstream) and the proxy under test get."""

    load: tuple[int, ...]
    proxy: tuple[int, ...]
    pinned: bool

    def prefix(self, cores: tuple[int, ...]) -> list[str]:
        """The ``taskset`` prefix for a command that must run on ``cores`` (empty if unpinned)."""
        if not self.pinned or not cores:
            return []
        return ["taskset", "-c", ",".join(str(c) for c in cores)]

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (fewer than 2 cores or no taskset)"
        return (
            f"load generator + upstream on cpu {_cores(self.load)}, "
            f"proxy under test on cpu {_cores(self.proxy)}"
        )


def _cores(cores: tuple[int, ...]) -> str:
    return ",".join(str(c) for c in cores)


def plan_cpus(enabled: bool = True) -> CpuPlan:
    """Split the usable cores: the first for the load side, the others for the proxy."""
    cores = tuple(sorted(os.sched_getaffinity(0)))
    if not enabled or len(cores) < 2 or shutil.which("taskset") is None:
        return CpuPlan(load=cores, proxy=cores, pinned=False)
    return CpuPlan(load=cores[:1], proxy=cores[1:], pinned=True)


def python_module(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def wait_port(port: int, timeout: float, child: Child | None = None) -> None:
    """Block until something accepts TCP connections on ``port``, or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None:
            child.check_alive()
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise HarnessError(f"nothing listened on {HOST}:{port} within {timeout:.0f}s")


def wait_http_ok(url: str, timeout: float, child: Child | None = None) -> None:
    """Block until ``url`` answers 200 (used for ``/readyz``), or raise."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if child is not None:
            child.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise HarnessError(f"{url} not ready within {timeout:.0f}s ({last})")


class Child:
    """One server process; its output goes to a log file whose tail explains a failure."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise HarnessError(
                f"{self.name} exited with status {self.proc.returncode}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group (workers included), then SIGKILL what is left.

        The leader is not reaped until the end, so its group id cannot be reused meanwhile.
        """
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._exited():
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def _exited(self) -> bool:
        """Whether the leader exited, without reaping it."""
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return True
        return info is not None
