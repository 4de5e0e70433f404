"""Webhook retries on a clock the test moves (issue 14): the backoff formula, giving up a day
after the event, disabling a webhook after a day of failures, a success ending the run of
failures, pruning, and the dispatcher's metrics.

These tests move time a week forward, which would touch any other test's deliveries: they run
on a PostgreSQL of this module's own, each dispatcher driven round by round."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from conftest import Stores, _start_stores
from webhook_rig import Receiver, create_webhook, dispatcher_settings, emit, receiver

from admin_api.metrics import AdminMetrics
from admin_api.webhook_dispatcher import MAX_RETRY_DELAY, RETENTION, WebhookDispatcher
from gatekeeper.store.clients import open_pg_pool
from gatekeeper.store.webhook_queue import fan_out, prune
from gatekeeper.types import ManualClock

BASE = 10.0  # webhook_retry_base_seconds
JITTER = 0.5  # what the jitter source returns: each delay is 0.75 of its ceiling


@pytest.fixture(scope="module")
def own_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    pair = _start_stores(tmp_path_factory.mktemp("webhook-clock"))
    yield pair
    pair.stop()


@pytest.fixture
async def pool(own_stores: Stores) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pg_pool(own_stores.pg_url, min_size=1, max_size=5)
    yield pool
    # Each test starts from an empty queue.
    await pool.execute("TRUNCATE webhooks, webhook_deliveries, webhook_attempts, event_outbox")
    await pool.close()


def _dispatcher(
    pool: asyncpg.Pool, clock: ManualClock, metrics: AdminMetrics | None = None, **options: Any
) -> WebhookDispatcher:
    settings = dispatcher_settings("postgresql://unused", webhook_retry_base_seconds=BASE)
    return WebhookDispatcher(
        pool, settings, metrics or AdminMetrics(), clock=clock, jitter=lambda: JITTER, **options
    )


async def _round(dispatcher: WebhookDispatcher) -> None:
    await dispatcher.run_once()
    await dispatcher.wait_idle()


def _now(clock: ManualClock) -> datetime:
    return datetime.fromtimestamp(clock.wall(), UTC)


async def _delivery(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM webhook_deliveries WHERE event_id = $1", event_id)
    assert row is not None
    return row


async def _failing(pool: asyncpg.Pool, got: Receiver) -> UUID:
    got.answer = lambda _n: 503
    return await create_webhook(pool, "acme", got.url, got.secret)


async def test_backoff_doubles_to_a_cap_and_gives_up_a_day_after_the_event(
    pool: asyncpg.Pool,
) -> None:
    clock = ManualClock()
    dispatcher = _dispatcher(pool, clock)
    async with receiver() as got:
        hook = await _failing(pool, got)
        event = await emit(
            pool, "acme", "device.blocked", {"deviceId": "d"}, device_id="d", created_at=_now(clock)
        )
        await _round(dispatcher)
        created = (await _delivery(pool, event))["created_at"]
        while (row := await _delivery(pool, event))["state"] == "pending":
            clock.advance(max((row["next_attempt_at"] - _now(clock)).total_seconds(), 0.0))
            await _round(dispatcher)
        await dispatcher.close()

    attempts = await pool.fetch(
        "SELECT attempted_at, status, error FROM webhook_attempts"
        " WHERE webhook_id = $1 ORDER BY id",
        hook,
    )
    times = [a["attempted_at"] for a in attempts]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    ceiling = MAX_RETRY_DELAY.total_seconds()
    expected = [min(BASE * 2**n, ceiling) * (0.5 + 0.5 * JITTER) for n in range(len(gaps))]
    assert gaps == pytest.approx(expected, abs=0.01)
    assert gaps[-1] == pytest.approx(ceiling * 0.75)  # capped
    # Tried until the next try would be past a day after the event, then failed.
    assert times[-1] <= created + timedelta(days=1)
    assert times[-1] + timedelta(seconds=ceiling * 0.75) > created + timedelta(days=1)
    assert row["state"] == "failed" and row["finished_at"] == times[-1]
    assert row["attempts"] == len(attempts) == len(got.hits)
    assert {(a["status"], a["error"]) for a in attempts} == {(503, "answered 503")}
    # Giving up one delivery does not disable the webhook: a day of failures does.
    enabled = await pool.fetchval("SELECT is_enabled FROM webhooks WHERE webhook_id = $1", hook)
    assert enabled is True


async def test_a_day_of_failures_disables_the_webhook_and_fails_what_is_pending(
    pool: asyncpg.Pool,
) -> None:
    clock = ManualClock()
    # One attempt at a time, so the later events are still pending when the rule applies.
    dispatcher = _dispatcher(pool, clock, max_in_flight=1)
    async with receiver() as got:
        hook = await _failing(pool, got)
        first = await emit(
            pool, "acme", "device.blocked", {"deviceId": "a"}, device_id="a", created_at=_now(clock)
        )
        await _round(dispatcher)
        since = await pool.fetchval(
            "SELECT failing_since FROM webhooks WHERE webhook_id = $1", hook
        )
        assert since == _now(clock)

        clock.advance(timedelta(days=1).total_seconds())
        later = [
            await emit(
                pool, "acme", "device.blocked", {"deviceId": d}, device_id=d, created_at=_now(clock)
            )
            for d in ("b", "c")
        ]
        await _round(dispatcher)  # the first event's retry fails: a day of failures
        await dispatcher.close()

        webhook = await pool.fetchrow("SELECT * FROM webhooks WHERE webhook_id = $1", hook)
        assert webhook is not None
        assert webhook["is_enabled"] is False and webhook["disabled_at"] == _now(clock)
        assert webhook["failing_since"] is None  # enabled again, it gets a day of its own
        for event in (first, *later):
            assert (await _delivery(pool, event))["state"] == "failed"
        assert [(await _delivery(pool, e))["attempts"] for e in later] == [0, 0]
        assert len(got.hits) == 2  # the first event, twice; nothing after the disable

        # A disabled webhook gets no new deliveries.
        after = await emit(pool, "acme", "device.blocked", {"deviceId": "d"}, device_id="d")
        dispatcher = _dispatcher(pool, clock)
        await _round(dispatcher)
        await dispatcher.close()
    assert (
        await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", after)
        == 0
    )


async def test_a_success_ends_the_run_of_failures(pool: asyncpg.Pool) -> None:
    clock = ManualClock()
    dispatcher = _dispatcher(pool, clock)
    async with receiver() as got:
        got.answer = lambda n: 500 if n < 2 else 204
        hook = await create_webhook(pool, "acme", got.url, got.secret)
        event = await emit(pool, "acme", "device.blocked", {"deviceId": "d"}, device_id="d")
        for attempt in (1, 2, 3):
            if attempt > 1:
                due = (await _delivery(pool, event))["next_attempt_at"]
                clock.advance(max((due - _now(clock)).total_seconds(), 0.0))
            await _round(dispatcher)
            failing = await pool.fetchval(
                "SELECT failing_since FROM webhooks WHERE webhook_id = $1", hook
            )
            assert (failing is None) == (attempt == 3), attempt
        await dispatcher.close()
    row = await _delivery(pool, event)
    assert (row["state"], row["attempts"]) == ("delivered", 3)
    statuses = await pool.fetch(
        "SELECT status FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id", row["id"]
    )
    assert [s["status"] for s in statuses] == [500, 500, 204]


async def test_finished_deliveries_and_fanned_out_events_are_pruned_after_a_week(
    pool: asyncpg.Pool,
) -> None:
    clock = ManualClock()
    dispatcher = _dispatcher(pool, clock)
    async with receiver() as got:
        await create_webhook(pool, "acme", got.url, got.secret)
        done = await emit(pool, "acme", "device.blocked", {"deviceId": "a"}, device_id="a")
        await _round(dispatcher)
        await dispatcher.close()
    assert (await _delivery(pool, done))["state"] == "delivered"
    # Still pending a week on, and an event not fanned out yet: neither is pruned.
    pending = await emit(pool, "acme", "device.blocked", {"deviceId": "b"}, device_id="b")
    assert await fan_out(pool, _now(clock), 100) == (1, 1)  # a delivery, never tried
    waiting = await emit(pool, "acme", "device.blocked", {"deviceId": "c"}, device_id="c")

    clock.advance(RETENTION.total_seconds() - 60)
    assert await prune(pool, _now(clock) - RETENTION) == (0, 0)  # not a week yet
    clock.advance(120)
    assert await prune(pool, _now(clock) - RETENTION) == (1, 2)
    assert await pool.fetchval("SELECT count(*) FROM webhook_attempts") == 0
    left = await pool.fetch("SELECT event_id::text FROM webhook_deliveries")
    assert [r["event_id"] for r in left] == [pending]
    outbox = await pool.fetch("SELECT event_id::text, fanned_out FROM event_outbox ORDER BY id")
    assert [(r["event_id"], r["fanned_out"]) for r in outbox] == [(waiting, False)]


async def test_the_dispatcher_reports_depth_age_and_results(pool: asyncpg.Pool) -> None:
    clock = ManualClock()
    metrics = AdminMetrics()
    dispatcher = _dispatcher(pool, clock, metrics)

    def sample(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, labels)
        assert value is not None, name
        return value

    async with receiver() as got:
        await _failing(pool, got)
        old = _now(clock) - timedelta(seconds=90)
        for device in ("a", "b"):
            await emit(
                pool,
                "acme",
                "device.blocked",
                {"deviceId": device},
                device_id=device,
                created_at=old,
            )
        await dispatcher.refresh_metrics(_now(clock))
        assert sample("gatekeeper_webhook_queue_depth", queue="events") == 2
        assert sample("gatekeeper_webhook_oldest_undelivered_seconds") == pytest.approx(90, abs=1)
        await _round(dispatcher)
        await dispatcher.refresh_metrics(_now(clock))
        await dispatcher.close()
    assert sample("gatekeeper_webhook_queue_depth", queue="events") == 0
    assert sample("gatekeeper_webhook_queue_depth", queue="deliveries") == 2
    assert sample("gatekeeper_webhook_deliveries_total", result="retry") == 2
    assert sample("gatekeeper_webhook_deliveries_total", result="delivered") == 0
    assert sample("gatekeeper_webhook_oldest_undelivered_seconds") == pytest.approx(90, abs=1)
