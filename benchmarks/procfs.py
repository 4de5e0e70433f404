"""What ``/proc`` says about a process tree: its pids, and each one's RSS, descriptors and TCP.

Read by the soak (:mod:`benchmarks.soak`) at every sample; nothing here signals or attaches to
a process, so measuring does not disturb what is measured.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["children_by_parent", "descendants", "process_figures", "runs_module", "tcp_table"]

_TCP_STATES = {"01": "established", "08": "close_wait", "0A": "listen"}


def children_by_parent() -> dict[int, list[int]]:
    """Every process's children, by parent pid."""
    tree: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text()
                # The command name may hold spaces and parentheses: split after the last ')'.
                tree[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    return tree


def runs_module(pid: int, module: str) -> bool:
    """Whether process ``pid`` runs ``python -m module`` (False once it is gone)."""
    try:
        return module.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def descendants(root: int, tree: dict[int, list[int]]) -> list[int]:
    """``root`` and every process under it in ``tree``, by pid."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, ()))
    return sorted(found)


def tcp_table() -> tuple[dict[str, tuple[str, int, int]], int]:
    """Socket inode -> (state, local port, remote port), and the TIME_WAIT count.

    TIME_WAIT entries belong to no process any more (their inode is 0), so they are only counted.
    """
    table: dict[str, tuple[str, int, int]] = {}
    time_wait = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                time_wait += fields[3] == "06"
                table[fields[9]] = (
                    _TCP_STATES.get(fields[3], "other"),
                    int(fields[1].rsplit(":", 1)[1], 16),
                    int(fields[2].rsplit(":", 1)[1], 16),
                )
    return table, time_wait


def process_figures(
    pid: int, tcp: dict[str, tuple[str, int, int]], peers: dict[int, str]
) -> dict[str, Any] | None:
    """RSS, descriptors and TCP sockets of one process; established ones named by the port of
    the server they talk to (``peers``), so a growing pool shows which pool it is."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # the process exited between the listing and the read
        return None
    links = []
    for fd in fds:
        with contextlib.suppress(OSError):  # closed since the listing: no longer open
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    kb = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+) kB", status, re.M))
    sockets = [
        tcp[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in tcp
    ]
    states = collections.Counter(state for state, _, _ in sockets)
    by_peer = collections.Counter(
        peers.get(local) or peers.get(remote) or "other"
        for state, local, remote in sockets
        if state == "established"
    )
    return {
        "pid": pid,
        "rss_kb": int(kb.get("VmRSS", 0)),
        "anon_kb": int(kb.get("RssAnon", 0)),
        "fds": len(links),
        "tcp": len(sockets),
        "tcp_states": dict(sorted(states.items())),
        "tcp_peers": dict(sorted(by_peer.items())),
    }
