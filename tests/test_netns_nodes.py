"""A block reaches two proxy nodes in network namespaces, across a shaped hop to Redis.

Issue 15, "network-level": two ``gatekeeper proxy`` processes, each started with ``ip netns
exec`` in a namespace of its own (tests/netnsrig.py), reach a Valkey of this test's in the root
namespace over a veth link delayed 5 ms each way: by ``tc netem`` where the kernel has it, by a
userspace delay line (tests/delayline.py) where it has not; the test prints which. PostgreSQL
(through an unshaped relay) and the upstreams are in the root namespace too; a third proxy on
loopback in the root namespace, with no hop, is the reference the hop is compared with.

The admin API (in this process) blocks and unblocks a device 20 times; for each node, the time
from the admin request to the node's first answer that shows it (403, then forwarded again) is
measured by a client polling the node's own address (the namespaced ones over their veth).
``pytest -s`` prints the figures and the hop's measured round trip (a Redis PING from inside
each node). The assertions are about behaviour: every node denies after every block and
forwards after every unblock, within a deadline (not a timing claim); every request a client
saw forwarded reached the upstream; and the hop is real (no namespaced node sees a change
before it crossed the hop once, no PING returns before crossing it twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from clusterrig import ValkeyNode
from conftest import Stores
from delayline import DelayRelays
from edgerig import CountingUpstream, ProxyProcess
from netnsrig import NetNode, NetnsRig, refusal
from test_admin_helpers import Api, admin_settings, running_api

from gatekeeper.runtime.embedded import free_port
from gatekeeper.store.clients import open_redis

DELAY_MS = 5.0  # each way, as `tc qdisc add … netem delay 5ms` on both ends of the link
TRIALS = 20
DEADLINE = 5.0  # a bound on the behaviour, generous; the figures are printed, not asserted
PINGS = 20
DEVICE = "across-the-hop"

# Run inside a node: the round trip of a Redis PING over its link, in seconds, PINGS times.
_PING = """
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rtts = []
with socket.create_connection((host, port), timeout=5) as sock:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(count):
        started = time.perf_counter()
        sock.sendall(b"PING\\r\\n")
        answer = b""
        while not answer.endswith(b"\\r\\n"):
            answer += sock.recv(64)
        rtts.append(time.perf_counter() - started)
print(json.dumps(rtts))
"""


@pytest.fixture
def netns() -> Iterator[NetnsRig]:
    """Two namespaces with their links; skips where this machine does not permit them."""
    reason = refusal()
    if reason is not None:
        pytest.skip(f"network namespaces are not permitted here: {reason}")
    rig = NetnsRig(2)
    rig.start()
    yield rig
    rig.stop()


@pytest.fixture
def relays() -> Iterator[DelayRelays]:
    running = DelayRelays()
    yield running
    running.stop()


class _Node:
    """One proxy (in a namespace, or the loopback reference: ``net`` None), its upstream, and
    what its client saw."""

    def __init__(
        self, net: NetNode | None, proxy: ProxyProcess, upstream: CountingUpstream
    ) -> None:
        self.net = net
        self.name = "loopback" if net is None else net.namespace
        self.proxy = proxy
        self.upstream = upstream
        self.forwarded = 0  # 200s its client got: each must have reached the upstream

    async def status(self, session: aiohttp.ClientSession, tenant: str, device: str) -> int:
        # A new connection each time (the session does not keep them), over the service link.
        async with session.get(
            f"{self.proxy.base}/api/{tenant}/x", headers={"X-Device-Id": device}
        ) as response:
            await response.read()
        if response.status == 200:
            self.forwarded += 1
        return response.status

    async def until(
        self, session: aiohttp.ClientSession, tenant: str, device: str, want: int, since: float
    ) -> float:
        """Seconds from ``since`` to this node's first ``want`` answer for ``device``."""
        while True:
            status = await self.status(session, tenant, device)
            now = time.perf_counter()
            if status == want:
                return now - since
            assert status in (200, 403), status
            assert now - since < DEADLINE, f"{self.name}: no {want} in {DEADLINE} s"


async def _hop_rtts(net: NetNode, redis_port: int) -> list[float]:
    argv = [*net.launcher, sys.executable, "-c", _PING, net.redis_host, str(redis_port)]
    done = await asyncio.to_thread(
        subprocess.run, [*argv, str(PINGS)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    rtts: list[float] = json.loads(done.stdout)
    return rtts


@contextlib.asynccontextmanager
async def _nodes(
    netns: NetnsRig, relays: DelayRelays, stores: Stores, folder: Path
) -> AsyncIterator[tuple[list[_Node], ValkeyNode, dict[str, int], str]]:
    """Valkey, the shaping, and a proxy in each namespace, ready; their Redis ports, shaping."""
    refused = netns.netem(DELAY_MS)
    shaping = (
        f"tc netem delay {DELAY_MS:g}ms on both ends of each Redis link"
        if refused is None
        else f"userspace delay line, {DELAY_MS:g} ms each way (tc netem refused: {refused})"
    )
    # With netem, Valkey itself listens on the root's end of each Redis link; otherwise on
    # loopback only, behind a relay on that address. Never on a public interface.
    bind = tuple(n.redis_host for n in netns.nodes) if refused is None else ()
    valkey = ValkeyNode(folder / "valkey", free_port(), ["--appendonly", "no"], bind=bind)
    pg = urlsplit(stores.pg_url)
    assert pg.hostname is not None and pg.port is not None
    nodes, redis_ports = [], {}
    async with contextlib.AsyncExitStack() as stack:
        valkey.start()
        stack.callback(valkey.stop)
        for net in netns.nodes:
            redis_port = valkey.port
            if refused is not None:
                redis_port = relays.add(net.redis_host, ("127.0.0.1", valkey.port), DELAY_MS / 1e3)
            redis_ports[net.namespace] = redis_port
            pg_port = relays.add(net.host, (pg.hostname, pg.port), 0.0)
            upstream = await stack.enter_async_context(CountingUpstream(host=net.host))
            proxy = ProxyProcess(
                database_url=pg._replace(netloc=f"{pg.username}@{net.host}:{pg_port}").geturl(),
                redis_url=f"redis://{net.redis_host}:{redis_port}/0",
                upstream=upstream.url,
                log_dir=folder,
                host=net.address,
                launcher=net.launcher,
            )
            stack.push_async_callback(proxy.stop)
            proxy.start()
            nodes.append(_Node(net, proxy, upstream))
        # The reference: a node in the root namespace on loopback, no hop (what the hop adds).
        upstream = await stack.enter_async_context(CountingUpstream())
        proxy = ProxyProcess(
            database_url=stores.pg_url,
            redis_url=f"redis://127.0.0.1:{valkey.port}/0",
            upstream=upstream.url,
            log_dir=folder,
        )
        stack.push_async_callback(proxy.stop)
        proxy.start()
        nodes.append(_Node(None, proxy, upstream))
        async with aiohttp.ClientSession() as session:
            for node in nodes:
                await node.proxy.wait_ready(session)
        yield nodes, valkey, redis_ports, shaping


def _figures(seconds: list[float]) -> str:
    return (
        f"p50 {statistics.median(seconds) * 1e3:.1f} ms, max {max(seconds) * 1e3:.1f} ms"
        f" (min {min(seconds) * 1e3:.1f})"
    )


async def _answered(api: Api, device: str, action: str, since: float) -> float:
    """Seconds from ``since`` until the admin API answered ``action`` (with 200)."""
    response = await api.call("POST", api.device_path(device, action))
    answered = time.perf_counter() - since
    assert response.status == 200, await response.text()
    return answered


async def _trials(
    api: Api, nodes: list[_Node], device: str
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """TRIALS blocks and unblocks; per node the seconds to deny and to forward; admin answers."""
    denied: dict[str, list[float]] = {n.name: [] for n in nodes}
    forwarded: dict[str, list[float]] = {n.name: [] for n in nodes}
    answers: list[float] = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for node in nodes:
            assert await node.status(session, api.tenant, device) == 200
        for _ in range(TRIALS):
            for action, want, into in (("/block", 403, denied), ("/unblock", 200, forwarded)):
                since = time.perf_counter()
                change = asyncio.create_task(_answered(api, device, action, since))
                took = await asyncio.gather(
                    *(n.until(session, api.tenant, device, want, since) for n in nodes)
                )
                if (answered := await change) and action == "/block":
                    answers.append(answered)
                for node, seconds in zip(nodes, took, strict=True):
                    into[node.name].append(seconds)
                    # It holds: the next request on a new connection answers the same.
                    assert await node.status(session, api.tenant, device) == want
    return denied, forwarded, answers


async def test_blocks_cross_a_shaped_hop_to_two_namespaced_nodes(
    netns: NetnsRig,
    relays: DelayRelays,
    stores: Stores,
    pg_pool: asyncpg.Pool,
    tenant: str,
    tmp_path: Path,
) -> None:
    async with _nodes(netns, relays, stores, tmp_path) as (nodes, valkey, redis_ports, shaping):
        hops = [n for n in nodes if n.net is not None]
        rtts = {n.name: await _hop_rtts(n.net, redis_ports[n.name]) for n in hops if n.net}
        redis = open_redis(f"redis://127.0.0.1:{valkey.port}/0")
        try:
            settings = admin_settings(stores.pg_url, f"redis://127.0.0.1:{valkey.port}/0")
            async with running_api(settings, pg_pool, redis, tenant) as api:
                await api.create_device(DEVICE)
                denied, forwarded, answers = await _trials(api, nodes, DEVICE)
        finally:
            await redis.aclose()

    print(f"\n[netns] shaping: {shaping}")
    for node in nodes:
        where = "no hop" if node.net is None else f"hop RTT {_figures(rtts[node.name])}"
        print(
            f"[netns] {node.name} ({node.proxy.host}; {where}): block->denied"
            f" {_figures(denied[node.name])}; unblock->forwarded {_figures(forwarded[node.name])}"
        )
    across = [s for n in hops for s in (*denied[n.name], *forwarded[n.name])]
    print(
        f"[netns] {TRIALS} blocks and {TRIALS} unblocks, from the admin request: across the hop"
        f" {_figures(across)}; the admin answered a block in {_figures(answers)}"
    )
    for node in nodes:
        # Every request the client saw forwarded reached the upstream; no denied one did.
        assert node.upstream.by_device[DEVICE] == node.forwarded, node.name
    for node in hops:
        # The hop is real: a round trip crosses it twice, a change at least once.
        assert min(rtts[node.name]) >= 2 * DELAY_MS / 1e3 * 0.95, rtts[node.name]
        assert min(denied[node.name] + forwarded[node.name]) >= DELAY_MS / 1e3 * 0.95
