"""Webhook routes (issue 14), continued: the deliveries listing (rows the dispatcher would write,
inserted here with SQL), the test event, and the scope matrix of every webhook route."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_admin_helpers import ALL_SCOPES, Api, problem

from admin_api.auth import WEBHOOK_READ, WEBHOOK_WRITE
from admin_api.webhook_security import sign
from gatekeeper.store.webhooks import ATTEMPT_LOG_MAX

ROOT = Path(__file__).resolve().parent.parent
HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["device.blocked"]}


async def _create(api: Api) -> str:
    response = await api.call("POST", api.path("/webhooks"), json=HOOK)
    assert response.status == 201, await response.text()
    hook_id: str = (await response.json())["webhookId"]
    return hook_id


async def _delivery(
    pool: asyncpg.Pool,
    tenant: str,
    hook_id: str,
    outbox_id: int,
    state: str,
    *,
    attempts: Sequence[tuple[int | None, str | None]] = (),
    device_id: str | None = "dev-1",
) -> tuple[int, uuid.UUID]:
    """A delivery as the dispatcher writes it, with its attempts (status, error), in order."""
    event_id = uuid.uuid4()
    body = json.dumps({"id": str(event_id), "type": "device.blocked", "data": {}})
    delivery_id: int = await pool.fetchval(
        """
        INSERT INTO webhook_deliveries (webhook_id, tenant_id, outbox_id, event_id, device_id,
                                        body, state, attempts, finished_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                CASE WHEN $7 = 'pending' THEN NULL ELSE now() END)
        RETURNING id
        """,
        uuid.UUID(hook_id),
        tenant,
        outbox_id,
        event_id,
        device_id,
        body,
        state,
        len(attempts),
    )
    for n, (status, error) in enumerate(attempts):
        await pool.execute(
            "INSERT INTO webhook_attempts (delivery_id, webhook_id, tenant_id, attempted_at,"
            " status, duration_ms, error)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6, $7)",
            delivery_id,
            uuid.UUID(hook_id),
            tenant,
            float(n),
            status,
            12.5 + n,
            error,
        )
    return delivery_id, event_id


async def test_deliveries_are_listed_newest_first_with_their_attempts(
    local_api: Api, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    api = local_api
    hook_id, other_id = await _create(api), await _create(api)
    failures = [(500, None)] * 11 + [(None, "connection refused")]
    first, first_event = await _delivery(pg_pool, tenant, hook_id, 10, "failed", attempts=failures)
    second, _ = await _delivery(
        pg_pool, tenant, hook_id, 11, "delivered", attempts=[(503, None), (200, None)]
    )
    third, _ = await _delivery(pg_pool, tenant, hook_id, 12, "pending", device_id=None)
    await _delivery(pg_pool, tenant, other_id, 13, "pending")  # another webhook's
    response = await api.call("GET", api.path(f"/webhooks/{hook_id}/deliveries"))
    assert response.status == 200, await response.text()
    listed = await response.json()
    assert [d["deliveryId"] for d in listed] == [third, second, first]
    pending, delivered, failed = listed
    assert pending["state"] == "pending" and pending["nextAttemptAt"] is not None
    assert pending["deviceId"] is None and pending["attemptLog"] == []
    assert pending["finishedAt"] is None and pending["attempts"] == 0
    assert delivered["nextAttemptAt"] is None and delivered["finishedAt"] is not None
    assert [a["status"] for a in delivered["attemptLog"]] == [503, 200]
    assert delivered["attemptLog"][0]["durationMs"] == 12.5
    assert delivered["attemptLog"][0]["attemptedAt"].endswith("Z")
    assert failed == {
        **failed,
        "eventId": str(first_event),
        "type": "device.blocked",
        "deviceId": "dev-1",
        "state": "failed",
        "attempts": 12,
    }
    # Bounded: the latest attempts, in the order they were made.
    assert len(failed["attemptLog"]) == ATTEMPT_LOG_MAX
    assert failed["attemptLog"][-1] == {
        **failed["attemptLog"][-1],
        "status": None,
        "error": "connection refused",
    }
    times = [a["attemptedAt"] for a in failed["attemptLog"]]
    assert times == sorted(times)
    # Paged like the other lists.
    page = await api.call("GET", api.path(f"/webhooks/{hook_id}/deliveries") + "?limit=2")
    assert [d["deliveryId"] for d in await page.json()] == [third, second]
    link = page.headers["Link"].split(">")[0].lstrip("<")
    rest = await (await api.call("GET", link)).json()
    assert [d["deliveryId"] for d in rest] == [first] and len(rest) == 1
    await problem(await api.call("GET", api.path(f"/webhooks/{uuid.uuid4()}/deliveries")), 404)
    bad_cursor = api.path(f"/webhooks/{hook_id}/deliveries") + "?cursor=zz"
    await problem(await api.call("GET", bad_cursor), 400)
    # Deleting the webhook deletes its deliveries and their attempts.
    assert (await api.call("DELETE", api.path(f"/webhooks/{hook_id}"))).status == 204
    assert not await pg_pool.fetchval(
        "SELECT count(*) FROM webhook_attempts WHERE webhook_id = $1", uuid.UUID(hook_id)
    )


async def test_the_test_route_writes_one_test_event(
    local_api: Api, pg_pool: asyncpg.Pool, tenant: str
) -> None:
    api = local_api
    hook_id = await _create(api)
    response = await api.call("POST", api.path(f"/webhooks/{hook_id}/test"))
    assert response.status == 202, await response.text()
    event_id = (await response.json())["eventId"]
    rows = await pg_pool.fetch(
        "SELECT event_id, type, device_id, data FROM event_outbox WHERE tenant_id = $1", tenant
    )
    assert len(rows) == 1
    (row,) = rows
    assert str(row["event_id"]) == event_id
    assert (row["type"], row["device_id"]) == ("webhook.test", None)
    assert json.loads(row["data"]) == {"webhookId": hook_id}
    await problem(await api.call("POST", api.path(f"/webhooks/{uuid.uuid4()}/test")), 404)
    # A disabled webhook gets nothing from the dispatcher: testing it is refused, not lost.
    await api.call("PATCH", api.path(f"/webhooks/{hook_id}"), json={"enabled": False})
    await problem(await api.call("POST", api.path(f"/webhooks/{hook_id}/test")), 409)
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM event_outbox WHERE tenant_id = $1", tenant)
        == 1
    )


# Every webhook route: method, path suffix after /webhooks, the scope it needs, a body.
ROUTES: list[tuple[str, str, str, Any]] = [
    ("POST", "", WEBHOOK_WRITE, HOOK),
    ("GET", "", WEBHOOK_READ, None),
    ("GET", "/{id}", WEBHOOK_READ, None),
    ("PATCH", "/{id}", WEBHOOK_WRITE, {"enabled": False}),
    ("GET", "/{id}/deliveries", WEBHOOK_READ, None),
    ("POST", "/{id}/test", WEBHOOK_WRITE, None),
    ("POST", "/{id}/secret/reset", WEBHOOK_WRITE, {"graceSeconds": 60}),
    ("DELETE", "/{id}", WEBHOOK_WRITE, None),
]


@pytest.mark.parametrize(("method", "suffix", "scope", "body"), ROUTES)
async def test_scope_matrix(
    local_api: Api, method: str, suffix: str, scope: str, body: Any
) -> None:
    api = local_api
    path = api.path("/webhooks" + suffix.replace("{id}", await _create(api)))
    others = [s for s in ALL_SCOPES if s != scope]
    denied = await api.call(method, path, json=body, scopes=others)
    assert scope in (await problem(denied, 403))["detail"]
    assert "insufficient_scope" in denied.headers["WWW-Authenticate"]
    # The device and token scopes do not reach webhooks, and the webhook scopes nothing else.
    await problem(await api.call(method, path, json=body, scopes=["Device.Write"]), 403)
    allowed = await api.call(method, path, json=body, scopes=[scope])
    assert allowed.status in (200, 201, 202, 204), await allowed.text()
    devices = await api.call("GET", api.path("/devices"), scopes=[WEBHOOK_READ, WEBHOOK_WRITE])
    await problem(devices, 403)


def test_the_documented_receiver_check_verifies_what_the_dispatcher_signs() -> None:
    """docs/webhooks.md's verification snippet, run as written, against the reference signer."""
    text = (ROOT / "docs" / "webhooks.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    scope: dict[str, Any] = {}
    exec(snippet, scope)
    verify = scope["verify"]
    body, now = b'{"id":"e1","type":"webhook.test"}', int(time.time())
    header = sign("whsec_doc", body, now)
    assert verify("whsec_doc", body, header)
    assert not verify("whsec_other", body, header)
    assert not verify("whsec_doc", body + b" ", header)
    assert not verify("whsec_doc", body, sign("whsec_doc", body, now - 3600))  # a replay
    assert not verify("whsec_doc", body, "t=x,v1=00")
    assert not verify("whsec_doc", body, f"t={now},v1=\u00e9")
    # During a secret's grace period: two signatures, either secret verifies, no other does.
    both = sign("whsec_new", body, now, previous="whsec_doc")
    assert verify("whsec_new", body, both) and verify("whsec_doc", body, both)
    assert not verify("whsec_other", body, both)
