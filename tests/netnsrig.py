"""Network namespaces as proxy "nodes": each its own network stack, joined to this one by veth.

Issue 15 asks for propagation "across a real hop": a proxy that reaches Redis over a link with
a delay on it, not over loopback. :class:`NetnsRig` makes ``count`` namespaces named
``gkn<pid><letter>``; each gets two veth pairs to the root namespace, each pair a /30 of its
own in a private /24 (``10.231.X.0/24``, a ``X`` no interface of this machine uses):

- the *service* link: the proxy listens on the namespace's end (the test's clients reach it
  from here), and the upstream and a PostgreSQL relay listen on the root's end;
- the *redis* link: the only way from the node to Redis, the one that is shaped.

Shaping: :meth:`NetnsRig.netem` puts ``tc qdisc … netem delay`` on both ends of every redis
link (the delay each way) and returns None, or returns why the kernel refused (no ``sch_netem``
module is common in containers and minimal VMs); then the caller shapes the link in userspace
with tests/delayline.py instead. Nothing here listens on or routes through a public interface.

:func:`refusal` probes once whether this process may create namespaces and veth pairs (root,
``CAP_SYS_ADMIN``/``CAP_NET_ADMIN``, iproute2 installed) and says why not; the tests skip with
that reason. Teardown deletes what was made, failure or not; a run killed before its teardown
leaves namespaces whose pid is gone, and the next probe removes them by name.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["PREFIX", "NetNode", "NetnsError", "NetnsRig", "refusal", "remove_stale"]

PREFIX = "gkn"
_OURS = re.compile(rf"^{PREFIX}(\d+)")
_NET = "10.231"


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command failed after the probe said namespaces are permitted."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete namespaces and root-side veth ends of runs whose process is gone; their names."""
    removed = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split(" ", 1)[0]
        if (m := _OURS.match(name)) and not _alive(int(m[1])):
            _run("ip", "netns", "delete", name, check=False)
            removed.append(name)
    # A veth pair whose namespace end was never moved (a run killed half-way through a start).
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0] if ":" in line else ""
        if (m := _OURS.match(name)) and not _alive(int(m[1])):
            _run("ip", "link", "delete", name, check=False)
            removed.append(name)
    return removed


@functools.cache
def refusal() -> str | None:
    """Why the tests may not make namespaces and veth pairs here, or None if they may."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    if os.geteuid() != 0:
        return f"network namespaces need root (CAP_SYS_ADMIN); running as uid {os.geteuid()}"
    remove_stale()
    name = f"{PREFIX}{os.getpid()}p"
    made = _run("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        return f"`ip netns add` refused: {made.stderr.strip()}"
    try:
        veth = _run(
            *("ip", "link", "add", f"{name}0", "type", "veth", "peer", "name", f"{name}1"),
            check=False,
        )
        if veth.returncode != 0:
            return f"`ip link add … type veth` refused: {veth.stderr.strip()}"
        _run("ip", "link", "delete", f"{name}0", check=False)
    finally:
        _run("ip", "netns", "delete", name, check=False)
    return None


def _free_subnet() -> int:
    """A third octet ``X`` such that no address of this machine is in 10.231.X.0/24."""
    used: str = _run("ip", "-4", "-o", "addr", "show").stdout
    start = os.getpid() % 200 + 20
    for x in list(range(start, 250)) + list(range(20, start)):
        if f" {_NET}.{x}." not in used:
            return x
    raise NetnsError(f"no free /24 in {_NET}.0.0/16")


@dataclass(frozen=True)
class NetNode:
    """One namespace and the addresses of its two links (``*_host``: the root's ends)."""

    namespace: str
    address: str  # the node's end of the service link: its proxy listens here
    host: str  # the root's end of the service link: upstream, PostgreSQL relay
    redis_address: str  # the node's end of the redis link
    redis_host: str  # the root's end of the redis link: Redis (netem) or its delay relay
    devices: tuple[str, str]  # the root-side ends: service, redis

    @property
    def launcher(self) -> tuple[str, ...]:
        """The argv prefix that runs a command inside this node."""
        return ("ip", "netns", "exec", self.namespace)


def _plan(i: int, subnet: int) -> NetNode:
    """Names and addresses of node ``i``: a /28 each, the service link's /30 then the redis
    link's (the root's end is .1 of its /30, the node's .2)."""
    ns = f"{PREFIX}{os.getpid()}{chr(ord('a') + i)}"
    base, octet = f"{_NET}.{subnet}.", 16 * i
    return NetNode(
        namespace=ns,
        address=f"{base}{octet + 2}",
        host=f"{base}{octet + 1}",
        redis_address=f"{base}{octet + 6}",
        redis_host=f"{base}{octet + 5}",
        devices=(f"{ns}s0", f"{ns}r0"),
    )


def _wire(node: NetNode) -> None:
    """The two veth pairs of ``node`` (its namespace exists), addressed and up; its lo up."""
    ns = node.namespace
    for kind, root_end, ns_end in (
        ("s", node.host, node.address),
        ("r", node.redis_host, node.redis_address),
    ):
        outside, inside = f"{ns}{kind}0", f"{ns}{kind}1"
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _run("ip", "link", "set", inside, "netns", ns)
        _run("ip", "addr", "add", f"{root_end}/30", "dev", outside)
        _run("ip", "link", "set", outside, "up")
        _run("ip", "-n", ns, "addr", "add", f"{ns_end}/30", "dev", inside)
        _run("ip", "-n", ns, "link", "set", inside, "up")
    _run("ip", "-n", ns, "link", "set", "lo", "up")


class NetnsRig:
    """``count`` namespaces, each with a service link and a redis link to the root namespace."""

    def __init__(self, count: int = 2) -> None:
        if count > 26:
            raise ValueError("at most 26 nodes (named a to z)")
        self._count = count
        self.nodes: list[NetNode] = []

    def start(self) -> list[NetNode]:
        subnet = _free_subnet()
        try:
            for i in range(self._count):
                node = _plan(i, subnet)
                _run("ip", "netns", "add", node.namespace)
                self.nodes.append(node)  # from here on, stop() deletes it
                _wire(node)
        except BaseException:
            self.stop()
            raise
        return self.nodes

    def _redis_ends(self) -> list[tuple[tuple[str, ...], str]]:
        """Both ends of every redis link, as (``tc`` options, device)."""
        ends: list[tuple[tuple[str, ...], str]] = []
        for node in self.nodes:
            ends += [((), node.devices[1]), (("-n", node.namespace), f"{node.namespace}r1")]
        return ends

    def netem(self, delay_ms: float) -> str | None:
        """``netem delay`` on both ends of every redis link; None, or why it could not be."""
        if shutil.which("tc") is None:
            return "iproute2's `tc` command is not installed"
        for where, device in self._redis_ends():
            done = _run(
                *("tc", *where, "qdisc", "add", "dev", device, "root"),
                *("netem", "delay", f"{delay_ms:g}ms"),
                check=False,
            )
            if done.returncode != 0:
                # No link half-shaped: the caller shapes them all another way.
                for undo_where, undo_device in self._redis_ends():
                    _run("tc", *undo_where, "qdisc", "del", "dev", undo_device, "root", check=False)
                return done.stderr.strip() or f"tc exited {done.returncode}"
        return None

    def stop(self) -> None:
        """Delete every namespace (its veth ends go with it) and any root end left. Idempotent."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            _run("ip", "netns", "delete", node.namespace, check=False)
            for device in node.devices:
                _run("ip", "link", "delete", device, check=False)
