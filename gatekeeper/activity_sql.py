"""The SQL of one activity flush: lock, compare, upsert, and history, in one transaction.

Rows are locked in key order (``ORDER BY … FOR UPDATE``) and the batch is inserted in the same
order, so several workers or nodes flushing overlapping devices queue instead of deadlocking.
Timestamps only move forward (``GREATEST``), so a late flush never rewinds a device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg

from gatekeeper.identity import ATTRIBUTE_FIELDS, Attributes

if TYPE_CHECKING:
    from gatekeeper.recorder import PendingDevice

__all__ = ["merge_attributes", "write_batch"]

DeviceKey = tuple[str, str]

_LOCK_CURRENT = """
SELECT d.tenant_id, d.device_id, d.application, d.application_version, d.os, d.os_version,
       d.manufacturer, d.model, d.attributes_seen_at
FROM devices d
JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, device_id) USING (tenant_id, device_id)
ORDER BY d.tenant_id, d.device_id
FOR UPDATE OF d
"""

_UPSERT = """
INSERT INTO devices AS d (tenant_id, device_id, application, application_version, os, os_version,
                          manufacturer, model, attributes_seen_at, first_seen_at, last_active_at,
                          last_data_upload_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[],
                     $11::timestamptz[], $12::timestamptz[])
ON CONFLICT (tenant_id, device_id) DO UPDATE SET
    application = CASE WHEN EXCLUDED.attributes_seen_at IS NULL THEN d.application
                       ELSE EXCLUDED.application END,
    application_version = CASE WHEN EXCLUDED.attributes_seen_at IS NULL THEN d.application_version
                               ELSE EXCLUDED.application_version END,
    os = CASE WHEN EXCLUDED.attributes_seen_at IS NULL THEN d.os ELSE EXCLUDED.os END,
    os_version = CASE WHEN EXCLUDED.attributes_seen_at IS NULL THEN d.os_version
                      ELSE EXCLUDED.os_version END,
    manufacturer = CASE WHEN EXCLUDED.attributes_seen_at IS NULL THEN d.manufacturer
                        ELSE EXCLUDED.manufacturer END,
    model = CASE WHEN EXCLUDED.attributes_seen_at IS NULL THEN d.model ELSE EXCLUDED.model END,
    attributes_seen_at = GREATEST(d.attributes_seen_at, EXCLUDED.attributes_seen_at),
    first_seen_at = LEAST(d.first_seen_at, EXCLUDED.first_seen_at),
    last_active_at = GREATEST(d.last_active_at, EXCLUDED.last_active_at),
    last_data_upload_at = GREATEST(d.last_data_upload_at, EXCLUDED.last_data_upload_at)
"""

_HISTORY = """
INSERT INTO device_history (tenant_id, device_id, recorded_at, changed_fields, previous, current)
SELECT t, d, r, string_to_array(c, ','), p::jsonb, n::jsonb
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[])
     AS x(t, d, r, c, p, n)
"""

_KEY_USES = """
UPDATE api_keys SET last_used_at = GREATEST(api_keys.last_used_at, x.used)
FROM unnest($1::bytea[], $2::timestamptz[]) AS x(digest, used)
WHERE api_keys.digest = x.digest
"""


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _doc(attributes: Attributes) -> str:
    return json.dumps(dict(zip(ATTRIBUTE_FIELDS, attributes, strict=True)))


def merge_attributes(new: Attributes, old: Attributes) -> Attributes:
    """A header left out of a request means "unchanged", not "cleared"."""
    return (new[0] or old[0], new[1] or old[1], new[2] or old[2], new[3] or old[3],
            new[4] or old[4], new[5] or old[5])


class _Columns:
    """Parallel arrays for the set-based statements."""

    def __init__(self, width: int) -> None:
        self.columns: list[list[object]] = [[] for _ in range(width)]

    def add(self, *values: object) -> None:
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)


def _plan(batch: Mapping[DeviceKey, PendingDevice],
          current: Mapping[DeviceKey, asyncpg.Record]) -> tuple[_Columns, _Columns]:
    """Decide each device's new attributes and the history records that lead there."""
    rows, history = _Columns(12), _Columns(6)
    for key in sorted(batch):
        entry = batch[key]
        old = current.get(key)
        seen_before = old["attributes_seen_at"].timestamp() if old and old[8] else None
        state: Attributes | None = (
            (old[2], old[3], old[4], old[5], old[6], old[7]) if seen_before is not None and old
            else None)
        applied_at: float | None = None
        for seen, attributes in entry.changes:
            if seen_before is not None and seen < seen_before:
                continue  # another worker already wrote a newer sighting
            merged = attributes if state is None else merge_attributes(attributes, state)
            if state is None or merged != state:
                changed = [name for name, before, after in zip(
                    ATTRIBUTE_FIELDS, state or (None,) * 6, merged, strict=True) if before != after]
                history.add(key[0], key[1], _ts(seen), ",".join(changed),
                            None if state is None else _doc(state), _doc(merged))
            state, applied_at = merged, seen
        final = state or (None, None, None, None, None, None)
        rows.add(key[0], key[1], *final, _ts(applied_at), _ts(entry.first_seen),
                 _ts(entry.last_active), _ts(entry.last_upload))
    return rows, history


async def write_batch(pool: asyncpg.Pool, batch: Mapping[DeviceKey, PendingDevice],
                      key_uses: Mapping[str, float]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if batch:
            keys = sorted(batch)
            locked = await conn.fetch(_LOCK_CURRENT, [k[0] for k in keys], [k[1] for k in keys])
            current = {(r[0], r[1]): r for r in locked}
            rows, history = _plan(batch, current)
            await conn.execute(_UPSERT, *rows.columns)
            if history.columns[0]:
                await conn.execute(_HISTORY, *history.columns)
        if key_uses:
            await conn.execute(_KEY_USES, [bytes.fromhex(d) for d in key_uses],
                               [_ts(t) for t in key_uses.values()])
