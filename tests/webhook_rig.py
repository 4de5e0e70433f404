"""Shared pieces of the webhook dispatcher tests (no tests here): a receiver on a real loopback
socket that verifies every signature, webhooks and events written with plain SQL (the admin
routes are tested on their own), and a dispatcher on the test's loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from admin_api.metrics import AdminMetrics
from admin_api.webhook_dispatcher import WebhookDispatcher
from admin_api.webhook_security import SIGNATURE_HEADER, new_secret, verify
from gatekeeper.settings import Settings
from gatekeeper.types import SYSTEM_CLOCK, Clock

__all__ = [
    "Hit",
    "Receiver",
    "create_webhook",
    "dispatcher_settings",
    "drop_webhooks",
    "emit",
    "receiver",
    "running_dispatcher",
]

# Every wait in these tests is for an event with this deadline, never a fixed sleep.
DEADLINE = 60.0


@dataclass(frozen=True)
class Hit:
    """One request the receiver got: the envelope, and the status it answered."""

    event_id: str
    type: str
    device_id: str | None
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes  # the body as received: what a signature covers


@dataclass
class Receiver:
    """What a test receiver saw; ``answer`` decides each status (by the request's number, from
    0), ``gate`` (when set) holds requests open until it is set."""

    secret: str
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    bad_signatures: int = 0
    answer: Callable[[int], int] = lambda _n: 200
    gate: asyncio.Event | None = None
    waiting: int = 0  # requests held at the gate now
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not verify(self.secret, raw, request.headers.get(SIGNATURE_HEADER, "")):
            self.bad_signatures += 1
        envelope = json.loads(raw)
        if self.gate is not None:
            await self._note(waiting=1)
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        status = self.answer(len(self.hits))
        hit = Hit(
            envelope["id"],
            envelope["type"],
            envelope["data"].get("deviceId"),
            status,
            envelope,
            dict(request.headers),
            raw,
        )
        self.hits.append(hit)
        await self._note()
        return web.Response(status=status)

    async def _note(self, waiting: int = 0) -> None:
        async with self._changed:
            self.waiting += waiting
            self._changed.notify_all()

    async def until(self, check: Callable[[Receiver], bool], what: str) -> None:
        """Wait (at most DEADLINE) until ``check`` holds."""
        try:
            async with asyncio.timeout(DEADLINE), self._changed:
                await self._changed.wait_for(lambda: check(self))
        except TimeoutError:
            raise AssertionError(
                f"receiver: gave up waiting for {what}; hits={self.hits}"
            ) from None

    def delivered(self) -> list[str]:
        """Event ids answered 2xx, in the order they arrived."""
        return [h.event_id for h in self.hits if 200 <= h.status < 300]


@asynccontextmanager
async def receiver(secret: str | None = None) -> AsyncIterator[Receiver]:
    got = Receiver(secret or new_secret())
    app = web.Application()
    app.router.add_post("/hook", got._handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield got
    finally:
        if got.gate is not None:
            got.gate.set()
        await runner.cleanup()


async def create_webhook(
    pool: asyncpg.Pool,
    tenant: str,
    url: str,
    secret: str,
    events: tuple[str, ...] = ("device.blocked", "device.unblocked", "device.changed"),
) -> uuid.UUID:
    webhook_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO webhooks (webhook_id, tenant_id, url, events, secret)"
        " VALUES ($1, $2, $3, $4, $5)",
        webhook_id,
        tenant,
        url,
        list(events),
        secret,
    )
    return webhook_id


async def emit(
    pool: asyncpg.Pool,
    tenant: str,
    type_: str,
    data: dict[str, Any],
    *,
    device_id: str | None = None,
    created_at: datetime | None = None,
) -> str:
    """One outbox event (any type, ``webhook.test`` too), committed; its public id."""
    event_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO event_outbox (tenant_id, device_id, type, data, created_at)"
        " VALUES ($1, $2, $3, $4::jsonb, coalesce($5, now())) RETURNING event_id",
        tenant,
        device_id,
        type_,
        json.dumps(data),
        created_at,
    )
    return str(event_id)


def dispatcher_settings(pg_url: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": pg_url,
        "webhook_allow_private_targets": True,  # the receivers are on loopback
        "webhook_timeout_seconds": 5.0,
        "webhook_retry_base_seconds": 0.05,
    }
    values.update(changes)
    return Settings(**values)


@asynccontextmanager
async def running_dispatcher(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    clock: Clock = SYSTEM_CLOCK,
    **options: Any,
) -> AsyncIterator[WebhookDispatcher]:
    """A dispatcher looping on this event loop (polling every 20 ms), cancelled after."""
    options.setdefault("poll_seconds", 0.02)
    dispatcher = WebhookDispatcher(pool, settings, AdminMetrics(), clock=clock, **options)
    task = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def drop_webhooks(pool: asyncpg.Pool, tenant: str) -> None:
    """A test's webhooks (and with them their deliveries and attempts), so no later dispatcher
    on the shared database tries its closed receivers."""
    await pool.execute("DELETE FROM webhooks WHERE tenant_id = $1", tenant)
