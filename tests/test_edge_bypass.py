"""The bypass corpus: generated variants of every known trick, against a real proxy.

One device is blocked in the tenants the requests aim at. ``hypothesis`` composes paths
(encodings, segments, dots, slashes, case, absolute-form), header-name spellings and framing
around upgrades; each case goes to the proxy as raw bytes, and the recording upstream is asked
afterwards whether any request of the blocked device reached it in a way the most forgiving
upstream would serve under one of those tenants (tests/recording_upstream.py). The answer must
be no, for every case. Seeded (``derandomize``) and bounded, so CI runs the same corpus each time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import EdgeFactory
from edgerig import raw_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recording_upstream import RecordingUpstream
from reliability_log import record

from gatekeeper.edge.server import EdgeServer
from gatekeeper.store import edge_writes as store

BLOCKED = "blk-corpus"
TENANTS = {"acme", "default"}
CASES = 150
CORPUS = settings(
    max_examples=CASES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# Pieces an attacker combines into a path that a lenient upstream reads as /api/acme/...
PREFIX_SEGMENTS = ["api", "API", "Api", "%61pi", "%41PI", "api;x", "api%2F", "a%70i"]
TENANT_SEGMENTS = ["acme", "ACME", "%61cme", "acme;x", "acm%65", "acme%2F", "%2561cme"]
NOISE_SEGMENTS = [
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "..;",
    ".%2e",
    "%252e%252e",
    "x",
    "x;y",
    "..%2F",
    "%5C..",
    "other",
]
SEPARATORS = ["/", "//", "/./", "\\", "%2F", "%5C", "/%2e/"]
DEVICE_HEADER_NAMES = [
    "X-Device-Id",
    "x-device-id",
    "X-DEVICE-ID",
    "X_Device_Id",
    "x_device_id",
    "X-Device_Id",
    "X_Device-Id",
]


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Hypothesis drives a synchronous test function; each example runs on a fresh loop."""
    asyncio.run(coro)


async def _send(port: int, data: bytes, wait: float = 2.0) -> bytes:
    """What comes back until the proxy closes or ``wait`` passes (a head the fuzzer left
    unfinished is still waiting for more)."""
    return await raw_bytes(port, data, quiet_after=wait)


class Corpus:
    """The proxy under attack and its recording upstream, shared by a test's examples."""

    def __init__(self, port: int, upstream: RecordingUpstream) -> None:
        self.port = port
        self.upstream = upstream
        self.cases = 0
        self.reached = 0  # requests of the allowed twin that were forwarded (non-vacuity)

    def attack(self, data: bytes, twin: bytes | None = None) -> None:
        """Send ``data`` (carrying the blocked id) and, if given, its allowed ``twin``."""

        async def go() -> None:
            await _send(self.port, data)
            if twin is not None:
                raw = await _send(self.port, twin)
                self.reached += raw.startswith(b"HTTP/1.1 200 ")

        _run(go())
        self.cases += 1
        leaked = self.upstream.leaks(BLOCKED, TENANTS)
        assert leaked == [], f"blocked device reached the upstream: {leaked} from {data!r}"


@pytest.fixture
async def corpus(
    edge_factory: EdgeFactory, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> AsyncIterator[Callable[[], Corpus]]:
    """A proxy whose event loop runs in a thread of its own, so that hypothesis can drive the
    examples synchronously from the test."""
    async with RecordingUpstream() as upstream:
        server: EdgeServer = await edge_factory(upstream=upstream.url)
        for tenant in TENANTS:
            await store.set_blocked(pg_pool, redis_client, tenant, BLOCKED, True, create=True)
        for _ in range(500):
            if all(server.mirror.denial((t, BLOCKED)) is not None for t in TENANTS):
                break
            await asyncio.sleep(0.01)
        yield lambda: Corpus(server.proxy_port, upstream)


async def _in_thread(test: Callable[[Corpus], None], corpus: Corpus) -> None:
    # The proxy serves on this loop; the examples block, so they run in a worker thread.
    await asyncio.to_thread(test, corpus)
    await asyncio.sleep(0.2)  # anything still on its way upstream has arrived by now
    assert corpus.upstream.leaks(BLOCKED, TENANTS) == []


# --- paths -------------------------------------------------------------------------------------

paths = st.builds(
    lambda lead, prefix, mid, tenant, tail, seps: (
        lead + prefix + seps[0] + "".join(m + seps[1] for m in mid) + tenant + seps[2] + tail
    ),
    st.sampled_from(["/", "//", "/./", "/x/../"]),
    st.sampled_from(PREFIX_SEGMENTS),
    st.lists(st.sampled_from(NOISE_SEGMENTS), max_size=3),
    st.sampled_from(TENANT_SEGMENTS),
    st.sampled_from(["ping", "", "a/../b", "%2e%2e/other"]),
    st.tuples(*[st.sampled_from(SEPARATORS)] * 3),
)
forms = st.sampled_from(["", "http://edge", "HTTP://edge:8080", "https://edge"])


async def test_path_variants_never_reach_the_upstream(corpus: Callable[[], Corpus]) -> None:
    @CORPUS
    @given(path=paths, form=forms)
    def case(c: Corpus, path: str, form: str) -> None:
        def request(device: str) -> bytes:
            return (
                f"GET {form}{path} HTTP/1.1\r\nHost: edge\r\nX-Device-Id: {device}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")

        c.attack(request(BLOCKED), twin=request("allowed-twin"))

    state = corpus()
    await _in_thread(case, state)
    record(
        "bypass.path",
        cases=state.cases,
        twins_forwarded=state.reached,
        reached_upstream=len(state.upstream.seen),
        leaked=0,
    )
    assert state.reached > 0  # the corpus also produces requests the edge forwards


# --- header names ------------------------------------------------------------------------------

headers = st.lists(
    st.tuples(
        st.sampled_from(DEVICE_HEADER_NAMES),
        st.sampled_from([BLOCKED, f" {BLOCKED} ", "allowed-twin"]),
    ),
    min_size=1,
    max_size=3,
).filter(lambda hs: any(BLOCKED in v for _, v in hs))


async def test_header_spellings_never_reach_the_upstream(corpus: Callable[[], Corpus]) -> None:
    @CORPUS
    @given(pairs=headers, tenant=st.sampled_from(["acme", ""]))
    def case(c: Corpus, pairs: list[tuple[str, str]], tenant: str) -> None:
        lines = "".join(f"{name}: {value}\r\n" for name, value in pairs)
        path = f"/api/{tenant}/x" if tenant else "/x"
        c.attack(
            f"GET {path} HTTP/1.1\r\nHost: edge\r\n{lines}Connection: close\r\n\r\n".encode(
                "latin-1"
            )
        )

    state = corpus()
    await _in_thread(case, state)
    record("bypass.headers", cases=state.cases, reached_upstream=len(state.upstream.seen), leaked=0)


# --- framing around upgrades -------------------------------------------------------------------

UPGRADES = [
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
    "Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n",
    "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    "Upgrade: foo\r\nConnection: upgrade\r\n",
    "Upgrade: websocket\r\n",
    "Connection: upgrade\r\n",
]


def _smuggled(tenant: str) -> str:
    return (
        f"GET /api/{tenant}/secret HTTP/1.1\r\nHost: edge\r\nX-Device-Id: {BLOCKED}\r\n"
        "Connection: close\r\n\r\n"
    )


async def test_upgrade_framing_never_opens_a_path(corpus: Callable[[], Corpus]) -> None:
    @CORPUS
    @given(
        method=st.sampled_from(["GET", "POST", "CONNECT", "OPTIONS"]),
        upgrade=st.sampled_from(UPGRADES),
        target=st.sampled_from(["/api/acme/refuse", "/api/acme/ws", "edge:80", "*"]),
        body=st.sampled_from(
            [
                "",
                "Content-Length: 5\r\n\r\nhello",
                "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ]
        ),
        tenant=st.sampled_from(["acme", "default"]),
    )
    def case(c: Corpus, method: str, upgrade: str, target: str, body: str, tenant: str) -> None:
        head = f"{method} {target} HTTP/1.1\r\nHost: edge\r\nX-Device-Id: allowed-twin\r\n"
        tail = body if body else "\r\n"
        smuggled = _smuggled(tenant).replace("/api/default", "/elsewhere")
        c.attack((head + upgrade + tail + smuggled).encode("latin-1"))

    state = corpus()
    await _in_thread(case, state)
    record("bypass.upgrade", cases=state.cases, reached_upstream=len(state.upstream.seen), leaked=0)


# --- the head parser, fuzzed ------------------------------------------------------------------

TEMPLATE = (
    f"GET /api/acme/x HTTP/1.1\r\nHost: edge\r\nX-Device-Id: {BLOCKED}\r\nContent-Length: 0\r\n\r\n"
).encode()
mutations = st.lists(
    st.tuples(st.integers(0, len(TEMPLATE)), st.integers(0, 3), st.binary(max_size=4)),
    min_size=1,
    max_size=4,
)


def _mutate(edits: list[tuple[int, int, bytes]]) -> bytes:
    data = TEMPLATE
    for at, cut, insert in edits:
        data = data[:at] + insert + data[at + cut :]
    return data


async def test_fuzzed_heads_are_refused_or_denied(corpus: Callable[[], Corpus]) -> None:
    """Random edits of a blocked device's request: whatever llhttp and the edge make of the
    bytes, the device never reaches the upstream and the proxy never answers 500."""
    statuses: list[int] = []

    @CORPUS
    @given(edits=mutations)
    def case(c: Corpus, edits: list[tuple[int, int, bytes]]) -> None:
        async def go() -> bytes:
            return await _send(c.port, _mutate(edits) + b"\r\n\r\n", wait=0.3)

        raw = asyncio.run(go())
        if raw.startswith(b"HTTP/1.1 "):
            statuses.append(int(raw[9:12]))
        c.cases += 1
        assert c.upstream.leaks(BLOCKED, TENANTS) == []

    state = corpus()
    await _in_thread(case, state)
    assert statuses and not [s for s in statuses if s >= 500 and s not in (502, 504, 505)]
    record(
        "bypass.fuzzed_head",
        cases=state.cases,
        reached_upstream=len(state.upstream.seen),
        answered=len(statuses),
        leaked=0,
    )
