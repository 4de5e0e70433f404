"""The in-process mirror of the Redis blocked, shadow and disabled sets.

The proxy asks :meth:`BlocklistMirror.denial` once per request: two look-ups, no I/O. Enforced
and shadow blocks share one dict (device → ``BLOCKED`` or ``SHADOW``), so a shadow block costs
a request nothing more than a block did: the same two look-ups, one of them now a dict's. One
background task (:meth:`BlocklistMirror.run`) keeps the sets fresh: it subscribes to the change
channel *first*, then loads both sets with SSCAN, then applies each message as it arrives; every
``resync_seconds`` and after every reconnect it reloads in full. While Redis is unreachable the
last loaded sets keep serving and the mirror reports itself stale. A ``batch`` event (a bulk
change, :mod:`gatekeeper.store.edge_batch`) names a Redis list of events: the task reads and
applies it in chunks before it reads the next message, so the order of changes is kept.

On a Redis Cluster the subscription is sharded (SSUBSCRIBE on the shard that owns the channel,
:mod:`gatekeeper.edge.changefeed`); a failover of that shard's primary drops it like any lost
connection: the mirror serves its last sets meanwhile, then subscribes where the slot now lives
and reloads. Every full reload is counted by reason (``gatekeeper_mirror_resyncs_total``).

A quiet subscription proves nothing: a hung Redis (or a partition) keeps the socket open and
simply says nothing. So the task PINGs on the subscription connection every ``ping_interval``
seconds; the PONG comes back behind every message published before it, so it is what marks the
mirror synced. No PONG within ``ping_timeout`` seconds and the connection counts as lost: stale,
reconnect, reload.

One cancellation ends the task. That needs care on Python 3.11: redis-py sends every command
through ``asyncio.wait_for``, which returns the command's result, and drops the cancellation,
when the cancellation lands after the send finished but before the caller resumed (CPython
gh-86296, fixed in 3.12). The request stays counted on the task, so the mirror checks
``Task.cancelling()`` after each Redis call and raises what was dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gatekeeper.domain import edgeview
from gatekeeper.domain.edgeview import EdgeEvent
from gatekeeper.edge import changefeed, metrics
from gatekeeper.logs import Throttled
from gatekeeper.store.clients import REDIS_FAILURES, RedisClient
from gatekeeper.types import SYSTEM_CLOCK, Clock, DeviceKey

__all__ = [
    "BLOCKED",
    "DISABLED",
    "PING_INTERVAL_SECONDS",
    "PING_TIMEOUT_SECONDS",
    "SHADOW",
    "BlocklistMirror",
    "SubscriptionLost",
]

_log = logging.getLogger(__name__)

BLOCKED = "blocked"
DISABLED = "disabled"
SHADOW = "shadow"  # blocked in shadow mode: forwarded, counted as shadow_blocked

# A PING a second costs Redis nothing, and keeps "last sync" as fine-grained as it was when a
# quiet subscription counted as a sync. Two seconds for its PONG is ~10,000 times a loopback
# round trip, and shorter than the client's 5 s socket timeout: a hung Redis shows as stale in at
# most three seconds (see docs/decisions.md, "the edge keeps its promise").
PING_INTERVAL_SECONDS = 1.0
PING_TIMEOUT_SECONDS = 2.0
_PING_TOKEN = "gatekeeper-mirror"
# Events of a batch read per round trip: bounds how long the loop applies before serving again.
_BATCH_CHUNK = 10_000


class SubscriptionLost(RedisConnectionError):
    """The subscription connection stopped answering: treated as a dropped connection."""


class ViewNotBuilt(RedisError):
    """The previous version's keys are in Redis and this version's view has not been built from
    Postgres yet: treated as Redis unavailable (no mirror yet: not ready; else the last copy)."""


def _key(member: str) -> DeviceKey:
    return edgeview.split_member(member)


def _raise_lost_cancellation() -> None:
    """Raise the cancellation a Redis call swallowed (see the module docstring): call right
    after each one. Nothing in the mirror catches a cancellation on purpose, so a request
    still counted on the task is one that was lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class BlocklistMirror:
    """Blocked and disabled devices of every tenant, as this process last heard from Redis."""

    __slots__ = (
        "__weakref__",  # redis-py holds connect callbacks as weak methods
        "_blocked",
        "_clock",
        "_disabled",
        "_on_key_event",
        "_on_resync",
        "_ping_interval",
        "_ping_timeout",
        "_reconnected",
        "_redis",
        "_resync_seconds",
        "_unloaded",
        "_watchers",
        "changed",
        "loaded",
        "stale",
        "synced_at",
    )

    def __init__(
        self,
        redis: RedisClient,
        *,
        resync_seconds: float,
        on_key_event: Callable[[EdgeEvent], None] | None = None,
        on_resync: Callable[[], None] | None = None,
        ping_interval: float = PING_INTERVAL_SECONDS,
        ping_timeout: float = PING_TIMEOUT_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._redis = redis
        self._clock = clock
        # Before the first load the mirror retries every 2 s or faster: a line per 10 s is enough.
        self._unloaded = Throttled(_log)
        metrics.STORE_UP.labels("redis")  # reported (as down) from the start, before any contact
        self._resync_seconds = resync_seconds
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._on_key_event = on_key_event
        self._on_resync = on_resync
        self._watchers: list[Callable[[], None]] = []
        self._blocked: dict[DeviceKey, str] = {}  # BLOCKED or SHADOW
        self._disabled: set[DeviceKey] = set()
        self._reconnected = False
        self.loaded = False
        self.stale = False
        self.synced_at = 0.0
        # Set after every applied change; tests and the propagation benchmark wait on it.
        self.changed = asyncio.Event()

    def denial(self, key: DeviceKey) -> str | None:
        """Why this device is denied (``blocked`` wins over ``disabled``, which wins over
        ``shadow``), or None. ``SHADOW`` denies nothing: the request goes on, counted."""
        mode = self._blocked.get(key)
        if mode is None or mode is SHADOW:
            return DISABLED if key in self._disabled else mode
        return mode

    def refuses(self, key: DeviceKey) -> bool:
        """Whether this device's traffic must stop (a shadow block lets it through)."""
        denial = self.denial(key)
        return denial is not None and denial is not SHADOW

    async def _load(self, reason: str) -> None:
        """Read the whole view and swap it in; ``reason`` labels the resync counter."""
        if not await self._redis.exists(edgeview.BUILT_KEY):
            # One key a call: on a cluster the old keys live in other slots.
            for legacy in edgeview.LEGACY_KEYS:
                if await self._redis.exists(legacy):
                    raise ViewNotBuilt(
                        "the edge view of this version is not built yet (found the previous"
                        f" version's {legacy}): start this version's admin API, or run"
                        " `gatekeeper reconcile`"
                    )
        blocked = {
            _key(m): SHADOW async for m in self._redis.sscan_iter(edgeview.SHADOW_SET, count=5000)
        }
        # Enforced after shadow: were a device in both sets, the block is enforced.
        async for m in self._redis.sscan_iter(edgeview.BLOCKED_SET, count=5000):
            blocked[_key(m)] = BLOCKED
        disabled = {
            _key(m) async for m in self._redis.sscan_iter(edgeview.DISABLED_SET, count=5000)
        }
        _raise_lost_cancellation()
        # Swap whole sets: a request never sees a half-loaded mirror.
        self._blocked, self._disabled = blocked, disabled
        first = not self.loaded
        self.loaded = True
        metrics.MIRROR_RESYNCS.labels(reason).inc()
        self._mark_synced()
        if self._on_resync is not None:
            self._on_resync()
        self._notify()
        metrics.BLOCKED_DEVICES.set(len(blocked))
        # The first load says the proxy can decide; the periodic resyncs after it are routine.
        _log.log(
            logging.INFO if first else logging.DEBUG,
            "blocklist mirror loaded: %d blocked, %d disabled",
            len(blocked),
            len(disabled),
        )

    def _mark_synced(self, at: float | None = None) -> None:
        self.synced_at = self._clock.wall() if at is None else at
        self.stale = False
        metrics.BLOCKLIST_LAST_SYNC.set(self.synced_at)
        metrics.BLOCKLIST_STALE.set(0)
        metrics.STORE_UP.labels("redis").set(1)

    def apply(self, event: EdgeEvent) -> None:
        if self._apply(event):
            self._notify()
        metrics.BLOCKED_DEVICES.set(len(self._blocked))
        self.changed.set()

    def _apply(self, event: EdgeEvent) -> bool:
        """Apply one change; True when it may have made a device denied (watchers to call)."""
        kind = event.kind
        if kind == "block":
            self._blocked[_key(event.subject)] = BLOCKED
            return True
        if kind == "shadow":
            self._blocked[_key(event.subject)] = SHADOW  # nothing to cut: no notify
        elif kind == "unblock":
            self._blocked.pop(_key(event.subject), None)
        elif kind == "disable":
            self._disabled.add(_key(event.subject))
            return True
        elif kind == "enable":
            self._disabled.discard(_key(event.subject))
        elif kind == "revoke" and self._on_key_event is not None:
            self._on_key_event(event)
        return False

    async def _apply_batch(self, key: str) -> None:
        """Apply the events listed under ``key`` (a bulk change announced once), a chunk at a
        time so that requests are served between chunks; watchers are told once, at the end.
        A batch already expired means this mirror is far behind: reload in full."""
        denied, start = False, 0
        while True:
            chunk = await self._redis.lrange(key, start, start + _BATCH_CHUNK - 1)
            _raise_lost_cancellation()
            if not chunk and start == 0:
                await self._load("batch_expired")
                return
            for raw in chunk:
                event = edgeview.decode(raw if isinstance(raw, str) else raw.decode())
                if event is not None:
                    denied = self._apply(event) or denied
            if len(chunk) < _BATCH_CHUNK:
                break
            start += _BATCH_CHUNK
        if denied:
            self._notify()
        metrics.BLOCKED_DEVICES.set(len(self._blocked))
        self.changed.set()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a device may have become denied (a block, a disable, a
        reload): for what a per-request check cannot reach, such as an open WebSocket."""
        self._watchers.append(callback)

    def _notify(self) -> None:
        for callback in self._watchers:
            callback()

    async def run(self) -> None:
        """Keep the mirror fresh until cancelled; reconnect with backoff on any failure.

        Nothing but a cancellation ends it: a mirror that stopped would go on serving its last
        sets, and every block made after that would be forwarded until the process restarted.
        An error that is not a Redis failure (a bug, a library's surprise) is logged with its
        traceback and handled as a lost connection: subscribe again, reload in full."""
        backoff = 0.1
        while True:
            _raise_lost_cancellation()  # lost while closing the subscription of a failed follow
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.stale:
                    backoff = 0.1  # a new outage after a healthy spell starts from the bottom
                if not isinstance(exc, REDIS_FAILURES):
                    _log.exception("blocklist: following the change feed failed; resubscribing")
                elif self.loaded and not self.stale:
                    _log.warning("blocklist: Redis unreachable (%s); serving the last mirror", exc)
                elif not self.loaded:
                    self._unloaded.warning(
                        "unloaded",
                        "blocklist: Redis unreachable (%s); no mirror yet, so the proxy answers "
                        "503 (fail_open = false) or forwards unchecked (fail_open = true)",
                        exc,
                    )
                self.stale = True
                metrics.BLOCKLIST_STALE.set(1 if self.loaded else 0)
                metrics.STORE_UP.labels("redis").set(0)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = 0.1

    async def _on_reconnect(self, _connection: object) -> None:
        self._reconnected = True

    async def _follow(self) -> None:
        feed = await changefeed.subscribe(self._redis)
        pubsub = feed.pubsub
        connection = None
        try:
            _raise_lost_cancellation()
            # A client with retries reconnects and resubscribes by itself, without a word:
            # whatever was published while the connection was down is lost, so hear of it.
            connection = pubsub.connection
            if connection is not None:
                connection.register_connect_callback(self._on_reconnect)
            self._reconnected = False
            if self.loaded:
                _log.info("blocklist: subscribed again (%s); reloading", feed.where)
            await self._load("reconnect" if self.loaded else "start")
            await self._listen(pubsub)
        finally:
            if connection is not None:
                connection.deregister_connect_callback(self._on_reconnect)
            await feed.aclose()

    async def _on_message(self, data: str) -> None:
        event = edgeview.decode(data)
        if event is None:
            return
        if event.kind == "resync":
            await self._load("announced")
        elif event.kind == "batch":
            await self._apply_batch(event.subject)
        else:
            self.apply(event)

    async def _listen(self, pubsub: PubSub) -> None:
        """Apply messages as they come; PING to prove the subscription is alive; reload when due.
        Returns only by raising (a lost connection, or cancellation)."""
        clock = self._clock
        next_resync = clock.monotonic() + self._resync_seconds
        next_ping = clock.monotonic() + self._ping_interval
        ping_sent: float | None = None  # monotonic time of the PING not yet answered
        ping_wall = 0.0  # the same instant, wall clock: what its PONG proves the mirror is as of
        while True:
            if ping_sent is None and clock.monotonic() >= next_ping:
                ping_sent, ping_wall = clock.monotonic(), clock.wall()
                await pubsub.ping(_PING_TOKEN)
                _raise_lost_cancellation()
            wake = ping_sent + self._ping_timeout if ping_sent is not None else next_ping
            message = await pubsub.get_message(
                timeout=max(0.01, min(wake, next_resync) - clock.monotonic())
            )
            _raise_lost_cancellation()  # a due health check sends a PING of its own
            if self._reconnected:
                self._reconnected = False
                _log.info("blocklist: subscription re-established; reloading")
                await self._load("reconnect")
                next_resync = clock.monotonic() + self._resync_seconds
                ping_sent = None  # sent on the connection that went away
                next_ping = clock.monotonic() + self._ping_interval
            kind = message.get("type") if message is not None else None
            if kind in changefeed.ENDED_TYPES:
                # Subscribe again where the channel's slot is now, and reload.
                raise SubscriptionLost("the server ended the subscription (slot moved)")
            if kind is None:
                # Silence past the deadline. (Only silence: while messages are still arriving
                # the PONG may be queued behind them, and the connection is plainly alive.)
                if ping_sent is not None and clock.monotonic() - ping_sent > self._ping_timeout:
                    raise SubscriptionLost(
                        f"no PONG on the subscription within {self._ping_timeout}s"
                    )
            elif kind == "pong":
                if ping_sent is not None:
                    # Everything published before the PING has been applied by now.
                    self._mark_synced(ping_wall)
                ping_sent = None
                next_ping = clock.monotonic() + self._ping_interval
            elif kind in changefeed.MESSAGE_TYPES and message is not None:
                await self._on_message(message["data"])
            if clock.monotonic() >= next_resync:
                await self._load("periodic")
                next_resync = clock.monotonic() + self._resync_seconds
