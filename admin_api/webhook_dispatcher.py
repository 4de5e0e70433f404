"""The webhook dispatcher (issue 14): turns outbox events into deliveries and POSTs them.

Every admin replica runs one (``webhook_dispatcher_ctx``); they share the queue through
Postgres (:mod:`gatekeeper.store.webhook_queue`). One round: fan out a batch of events, lease
the due deliveries there is room for and start each as a task of its own, then refresh the
metrics and, now and then, prune. A round with work is followed at once by another; an idle
one waits for a delivery to finish or for the poll interval.

Attempts run in parallel, at most ``max_in_flight`` in all, ``per_webhook`` per webhook and
``per_tenant`` per tenant, so a slow receiver holds only its own share and never the loop: the
admin API's requests and other webhooks' deliveries go on around it, and a tenant pointing many
webhooks at a tarpit holds at most half the slots, never the other tenants' deliveries. A
lease (``2 * timeout + 10 s``) outlasts any attempt, so a dispatcher killed mid-delivery leaves
the delivery to be tried again once the lease ends: at least once. Backoff, give-up and the
disable rule are decided with ``clock``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from admin_api.context import CLOCK, PG_POOL, SETTINGS
from admin_api.metrics import METRICS, AdminMetrics
from admin_api.webhook_security import (
    SIGNATURE_HEADER,
    TargetRefused,
    check_target,
    is_public_address,
    sign,
)
from gatekeeper import __version__
from gatekeeper.settings import Settings
from gatekeeper.store import webhook_queue as queue
from gatekeeper.store.clients import POSTGRES_FAILURES
from gatekeeper.store.webhook_queue import Claimed
from gatekeeper.types import SYSTEM_CLOCK, Clock

__all__ = [
    "MAX_RETRY_DELAY",
    "RETENTION",
    "PublicOnlyResolver",
    "WebhookDispatcher",
    "webhook_dispatcher_ctx",
]

_log = logging.getLogger(__name__)

USER_AGENT: Final = f"Gatekeeper-Webhooks/{__version__}"
# Retries double from webhook_retry_base_seconds up to this, with jitter.
MAX_RETRY_DELAY: Final = timedelta(hours=1)
# Finished deliveries (with their attempts) and fanned-out events are kept this long.
RETENTION: Final = timedelta(days=7)
_PRUNE_EVERY_SECONDS: Final = 300.0
_METRICS_EVERY_SECONDS: Final = 1.0
_STORE_ERRORS: Final = POSTGRES_FAILURES
# Results recorded at once, at most: the pool is the admin API's too (10 connections), and a
# burst of finished attempts must not take all of it from the requests.
_RECORDING_CONNECTIONS: Final = 3


class WebhookDispatcher:
    """Delivers the webhook queue; :meth:`run` until cancelled, or :meth:`run_once` (tests)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: AdminMetrics,
        *,
        clock: Clock = SYSTEM_CLOCK,
        poll_seconds: float = 1.0,
        max_in_flight: int = 64,
        per_webhook: int = 8,
        per_tenant: int = 32,
        fan_out_batch: int = 500,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._clock = clock
        self._poll = poll_seconds
        self._max_in_flight = max_in_flight
        self._batch = fan_out_batch
        self._jitter = jitter
        self._timeout = settings.webhook_timeout_seconds
        self._base = settings.webhook_retry_base_seconds
        self._allow_private = settings.webhook_allow_private_targets
        self.lease = timedelta(seconds=2 * self._timeout + 10)
        self._tasks: set[asyncio.Task[None]] = set()
        self._shares = queue.Shares(per_webhook, per_tenant)
        self._wake = asyncio.Event()
        self._recording = asyncio.Semaphore(_RECORDING_CONNECTIONS)
        self._session: aiohttp.ClientSession | None = None
        self._metrics_at = float("-inf")
        self._pruned_at = float("-inf")
        self.failed_rounds = 0  # rounds that failed on the database or a bug (tests read it)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Rounds until cancelled; a round that fails on the database is logged and retried."""
        try:
            while True:
                self._wake.clear()
                try:
                    busy = await self.run_once()
                except _STORE_ERRORS as exc:
                    _log.warning("webhook dispatcher: round failed (%s); trying again", exc)
                    self.failed_rounds += 1
                    busy = False
                except Exception:
                    # A bug must not end deliveries for the life of the process.
                    _log.exception("webhook dispatcher: round failed; trying again")
                    self.failed_rounds += 1
                    busy = False
                if not busy:
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._poll)
                    except TimeoutError:
                        pass
        finally:
            await self.close()

    async def run_once(self) -> bool:
        """One round; whether it found work (then another round should follow at once)."""
        now = self._now()
        events, _ = await queue.fan_out(self._pool, now, self._batch)
        started = await self._start_due(now)
        await self._housekeeping(now)
        return events > 0 or started > 0

    async def wait_idle(self) -> None:
        """Until the attempts in flight have finished (tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Let attempts in flight finish for a while, cancel the rest (their leases end and
        another round delivers them), close the HTTP client."""
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=min(self._timeout, 5.0))
            for task in pending:
                task.cancel()
            if pending:
                _log.info("webhook dispatcher: %d attempts cut short by the stop", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.wall(), UTC)

    async def _start_due(self, now: datetime) -> int:
        room = self._max_in_flight - len(self._tasks)
        if room <= 0:
            return 0
        claimed = await queue.claim(
            self._pool,
            now,
            now + self.lease,
            room,
            self._shares,
        )
        for delivery in claimed:
            self._shares.take(delivery.webhook_id, delivery.tenant_id)
            task = asyncio.create_task(self._deliver(delivery), name="webhook-delivery")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def _housekeeping(self, now: datetime) -> None:
        # Throttled by the real clock: a test's clock may stand still.
        moment = time.monotonic()
        if moment - self._metrics_at >= _METRICS_EVERY_SECONDS:
            self._metrics_at = moment
            await self.refresh_metrics(now)
        if moment - self._pruned_at >= _PRUNE_EVERY_SECONDS:
            self._pruned_at = moment
            deliveries, events = await queue.prune(self._pool, now - RETENTION)
            if deliveries or events:
                _log.info("webhooks: pruned %d deliveries and %d events", deliveries, events)

    async def refresh_metrics(self, now: datetime) -> None:
        state = await queue.queue_state(self._pool)
        self._metrics.webhook_queue_depth.labels("events").set(state.events)
        self._metrics.webhook_queue_depth.labels("deliveries").set(state.deliveries)
        age = 0.0 if state.oldest is None else (now - state.oldest).total_seconds()
        self._metrics.webhook_oldest_seconds.set(max(age, 0.0))

    # --- one attempt ---------------------------------------------------------------------------

    def retry_delay(self, attempt: int) -> timedelta:
        """After failed attempt number ``attempt`` (1 = the first): base * 2^(attempt-1),
        capped at an hour, times a jitter in [0.5, 1)."""
        delay = min(self._base * 2.0 ** min(attempt - 1, 40), MAX_RETRY_DELAY.total_seconds())
        return timedelta(seconds=delay * (0.5 + 0.5 * self._jitter()))

    async def _deliver(self, delivery: Claimed) -> None:
        try:
            status, error, duration_ms = await self._post(delivery)
            async with self._recording:
                now = self._now()
                if error is None and status is not None:
                    await queue.record_success(self._pool, delivery, now, status, duration_ms)
                    self._metrics.webhook_deliveries.labels("delivered").inc()
                    return
                retry_at = now + self.retry_delay(delivery.attempt)
                gave_up, dropped = await queue.record_failure(
                    self._pool, delivery, now, retry_at, status, duration_ms, error
                )
            self._metrics.webhook_deliveries.labels("failed" if gave_up else "retry").inc()
            if dropped is not None:
                self._metrics.webhook_deliveries.labels("failed").inc(dropped)
                _log.warning(
                    "webhook %s failed for a day: disabled, %d pending deliveries failed",
                    delivery.webhook_id,
                    dropped,
                )
            elif gave_up:
                _log.warning(
                    "webhook %s: delivery %d given up after a day of retries",
                    delivery.webhook_id,
                    delivery.delivery_id,
                )
        except _STORE_ERRORS as exc:
            # The result is lost, not the delivery: its lease ends and it is tried again.
            _log.warning("webhook %s: result not recorded (%s)", delivery.webhook_id, exc)
        except Exception:
            _log.exception("webhook %s: attempt failed unexpectedly", delivery.webhook_id)
        finally:
            self._shares.give_back(delivery.webhook_id, delivery.tenant_id)
            self._wake.set()

    async def _post(self, delivery: Claimed) -> tuple[int | None, str | None, float]:
        """(status, error, milliseconds); error None means a 2xx. The error names what went
        wrong, never the URL (it may carry a token) or the secret."""
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._timeout):
                if not self._allow_private:
                    # Again at each attempt: the name may resolve elsewhere by now.
                    await check_target(delivery.url, allow_private=False)
                body = delivery.body.encode()
                headers = {
                    SIGNATURE_HEADER: sign(
                        delivery.secret,
                        body,
                        int(self._clock.wall()),
                        delivery.previous_secret,
                    ),
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                }
                async with self._client().post(
                    delivery.url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
            if not 200 <= status < 300:
                error = f"answered {status}" + (
                    "; redirects are not followed" if 300 <= status < 400 else ""
                )
        except TargetRefused as refused:
            error = f"target refused: {refused}"
        except TimeoutError:
            error = f"no answer within {self._timeout:g} s"
        except aiohttp.ClientConnectorError as cannot:
            error = f"cannot connect: {cannot.os_error.strerror or type(cannot.os_error).__name__}"
        except aiohttp.ClientError as failed:
            error = f"request failed: {type(failed).__name__}"
        except (OSError, ValueError) as other:
            error = f"request failed: {type(other).__name__}"
        return status, error, (time.perf_counter() - started) * 1000.0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None if self._allow_private else PublicOnlyResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_in_flight, resolver=resolver),
                # No cookies kept between receivers, no proxy from the environment.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session


class PublicOnlyResolver(AbstractResolver):
    """The system's resolver, refusing a name that resolves to any non-public address: the
    check before each attempt, applied again at connect time, so a name cannot rebind to a
    private address between the two."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if not found or not all(is_public_address(r["host"]) for r in found):
            raise OSError(0, "the host resolves to a private, loopback or link-local address")
        return found

    async def close(self) -> None:
        await self._inner.close()


async def webhook_dispatcher_ctx(app: web.Application) -> AsyncIterator[None]:
    """The dispatcher as a background task of the admin service (``cleanup_ctx``)."""
    settings = app[SETTINGS]
    if not settings.webhook_dispatcher:
        yield
        return
    dispatcher = WebhookDispatcher(app[PG_POOL], settings, app[METRICS], clock=app[CLOCK])
    task = asyncio.create_task(dispatcher.run(), name="admin-webhook-dispatcher")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
