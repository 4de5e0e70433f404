"""The SQL of one activity flush, in one transaction: new devices first, then known ones.

1. Every device of the batch is inserted, in key order, with ``ON CONFLICT DO NOTHING``; the same
   statement writes the history of the devices it did insert (their first sighting and any change
   seen after it in this batch) and returns which devices already existed. For a batch of new
   devices that is the whole flush: one round trip, nothing locked beyond the new rows.
2. The devices that already existed are locked in key order (``ORDER BY … FOR UPDATE``), compared
   with what is stored, and upserted; their history records are written. When every device of
   the piece has a single sighting in the batch (a touch, or one attribute change), lock,
   comparison, upsert and history are one statement (``_KNOWN_ONE_SIGHTING``); otherwise the
   comparison happens in Python between a lock select and the upsert.

Both phases take their row locks in key order, and phase 1 only waits for other inserters of the
same new keys, so several workers or nodes flushing overlapping devices queue instead of
deadlocking. Timestamps only move forward (``GREATEST``), so a late flush never rewinds a device,
and an attribute sighting older than the stored one is never applied (``attributes_seen_at``).
Devices a worker has already written skip phase 1 (``known``): in steady state a flush is only
phase 2.

Rows travel as one JSON text parameter per statement (an array of arrays), not as parallel
``unnest`` arrays: asyncpg encodes arrays element by element in Python-level code, while
``json.dumps`` is C, and the parsing then happens in Postgres, on another core than the proxy's.
The parameter is ``jsonb``: parsed once, where ``->>`` on ``json`` re-parses the element for every
column read.
Times travel as epoch seconds and become ``timestamptz`` in SQL; history documents and
changed-field lists are built in SQL too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Container, Mapping, Sequence

import asyncpg

from gatekeeper.domain.identity import Attributes
from gatekeeper.edge.activity.pending import PendingDevice, merge_attributes
from gatekeeper.types import DeviceKey

__all__ = ["write_batch"]

_Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def _columns(names: str, types: Sequence[str]) -> str:
    """``(e->>0)::type AS name, …`` for rows sent as a JSON array of arrays."""
    return ", ".join(
        f"(e->>{i})::{kind} AS {name}"
        for i, (name, kind) in enumerate(zip(names.split(), types, strict=True))
    )


# A device row: tenant, device, the six attributes, attributes seen at, first seen, last active,
# last upload (times as epoch seconds).
_DEVICE_ROWS = "SELECT {cols} FROM jsonb_array_elements(${n}::jsonb) AS x(e)".replace(
    "{cols}",
    _columns(
        "t d a v o ov m mo seen first_seen last_active last_upload", ("text",) * 8 + ("float8",) * 4
    ),
)
# A history record: tenant, device, seen at, is-first-sighting, the six previous attributes, the
# six current attributes.
_HISTORY_INPUT = "SELECT {cols} FROM jsonb_array_elements(${n}::jsonb) AS x(e)".replace(
    "{cols}",
    _columns(
        "t d r first pa pv po pov pm pmo ca cv co cov cm cmo",
        ("text", "text", "float8", "bool") + ("text",) * 12,
    ),
)

_HISTORY_ROWS = """
SELECT h.t, h.d, to_timestamp(h.r),
       array_remove(ARRAY[
           CASE WHEN h.pa IS DISTINCT FROM h.ca THEN 'application' END,
           CASE WHEN h.pv IS DISTINCT FROM h.cv THEN 'applicationVersion' END,
           CASE WHEN h.po IS DISTINCT FROM h.co THEN 'os' END,
           CASE WHEN h.pov IS DISTINCT FROM h.cov THEN 'osVersion' END,
           CASE WHEN h.pm IS DISTINCT FROM h.cm THEN 'manufacturer' END,
           CASE WHEN h.pmo IS DISTINCT FROM h.cmo THEN 'model' END], NULL),
       CASE WHEN h.first THEN NULL ELSE jsonb_build_object(
           'application', h.pa, 'applicationVersion', h.pv, 'os', h.po, 'osVersion', h.pov,
           'manufacturer', h.pm, 'model', h.pmo) END,
       jsonb_build_object(
           'application', h.ca, 'applicationVersion', h.cv, 'os', h.co, 'osVersion', h.cov,
           'manufacturer', h.cm, 'model', h.cmo)
FROM ({rows}) AS h
"""

# Phase 1. The keys come sorted; ORDER BY ordinality keeps the insert (and its locks) in that order.
_INSERT_NEW = f"""
WITH input AS (
    SELECT rows.*, row_number() OVER () AS i FROM ({_DEVICE_ROWS.format(n=1)}) AS rows
), inserted AS (
    INSERT INTO devices (tenant_id, device_id, application, application_version, os, os_version,
                         manufacturer, model, attributes_seen_at, first_seen_at, last_active_at,
                         last_data_upload_at)
    SELECT t, d, a, v, o, ov, m, mo, to_timestamp(seen), to_timestamp(first_seen),
           to_timestamp(last_active), to_timestamp(last_upload)
    FROM input ORDER BY i
    ON CONFLICT (tenant_id, device_id) DO NOTHING
    RETURNING tenant_id, device_id
), history AS (
    INSERT INTO device_history (tenant_id, device_id, recorded_at, changed_fields, previous,
                                current)
    SELECT rows.* FROM ({_HISTORY_ROWS.format(rows=_HISTORY_INPUT.format(n=2))}) AS rows
    JOIN inserted ON inserted.tenant_id = rows.t AND inserted.device_id = rows.d
)
SELECT i - 1 FROM input
WHERE NOT EXISTS (SELECT FROM inserted WHERE inserted.tenant_id = input.t
                                         AND inserted.device_id = input.d)
ORDER BY i
"""

_LOCK_CURRENT = """
SELECT d.tenant_id, d.device_id, d.application, d.application_version, d.os, d.os_version,
       d.manufacturer, d.model, extract(epoch FROM d.attributes_seen_at)::float8
FROM devices d
JOIN (SELECT e->>0 AS tenant_id, e->>1 AS device_id FROM jsonb_array_elements($1::jsonb) AS x(e))
    AS k USING (tenant_id, device_id)
ORDER BY d.tenant_id, d.device_id
FOR UPDATE OF d
"""

# Phase 2. An upsert rather than an update: a device deleted since phase 1 comes back, as any
# device that calls again does.
_UPSERT = f"""
INSERT INTO devices AS d (tenant_id, device_id, application, application_version, os, os_version,
                          manufacturer, model, attributes_seen_at, first_seen_at, last_active_at,
                          last_data_upload_at)
SELECT t, d, a, v, o, ov, m, mo, to_timestamp(seen), to_timestamp(first_seen),
       to_timestamp(last_active), to_timestamp(last_upload)
FROM ({_DEVICE_ROWS.format(n=1)}) AS x
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

# Phase 2 in one statement, for pieces whose every device has one sighting in the batch (a touch,
# or one attribute change): the lock, the comparison with what is stored (as ``_History.add_from``
# does it) and the upsert and history happen in Postgres, without a round trip in between. Locks
# are taken in key order by ``stored``, as ``_LOCK_CURRENT`` takes them.
_KNOWN_ONE_SIGHTING = f"""
WITH input AS (
    SELECT rows.*, row_number() OVER () AS i FROM ({_DEVICE_ROWS.format(n=1)}) AS rows
), stored AS (
    SELECT s.tenant_id, s.device_id, s.application, s.application_version, s.os, s.os_version,
           s.manufacturer, s.model, extract(epoch FROM s.attributes_seen_at)::float8 AS seen
    FROM devices s
    JOIN input ON input.t = s.tenant_id AND input.d = s.device_id
    ORDER BY s.tenant_id, s.device_id
    FOR UPDATE OF s
), compared AS (
    SELECT input.*, s.seen IS NULL AS first, s.seen IS NOT NULL AND input.seen < s.seen AS stale,
           CASE WHEN s.seen IS NOT NULL THEN s.application END AS pa,
           CASE WHEN s.seen IS NOT NULL THEN s.application_version END AS pv,
           CASE WHEN s.seen IS NOT NULL THEN s.os END AS po,
           CASE WHEN s.seen IS NOT NULL THEN s.os_version END AS pov,
           CASE WHEN s.seen IS NOT NULL THEN s.manufacturer END AS pm,
           CASE WHEN s.seen IS NOT NULL THEN s.model END AS pmo
    FROM input
    LEFT JOIN stored AS s ON s.tenant_id = input.t AND s.device_id = input.d
), merged AS (
    SELECT c.*,
           CASE WHEN first THEN a ELSE COALESCE(NULLIF(a, ''), pa) END AS ca,
           CASE WHEN first THEN v ELSE COALESCE(NULLIF(v, ''), pv) END AS cv,
           CASE WHEN first THEN o ELSE COALESCE(NULLIF(o, ''), po) END AS co,
           CASE WHEN first THEN ov ELSE COALESCE(NULLIF(ov, ''), pov) END AS cov,
           CASE WHEN first THEN m ELSE COALESCE(NULLIF(m, ''), pm) END AS cm,
           CASE WHEN first THEN mo ELSE COALESCE(NULLIF(mo, ''), pmo) END AS cmo
    FROM compared AS c
), upsert AS (
    INSERT INTO devices AS d (tenant_id, device_id, application, application_version, os,
                              os_version, manufacturer, model, attributes_seen_at, first_seen_at,
                              last_active_at, last_data_upload_at)
    SELECT t, d, ca, cv, co, cov, cm, cmo, CASE WHEN NOT stale THEN to_timestamp(seen) END,
           to_timestamp(first_seen), to_timestamp(last_active), to_timestamp(last_upload)
    FROM merged ORDER BY i
    ON CONFLICT (tenant_id, device_id) DO UPDATE SET{_UPSERT.split("DO UPDATE SET", 1)[1]}
)
INSERT INTO device_history (tenant_id, device_id, recorded_at, changed_fields, previous, current)
{
    _HISTORY_ROWS.format(
        rows="SELECT t, d, seen AS r, first, pa, pv, po, pov, pm, pmo, ca, cv, co, cov, cm, cmo"
        " FROM merged WHERE NOT stale AND (first OR (pa, pv, po, pov, pm, pmo)"
        " IS DISTINCT FROM (ca, cv, co, cov, cm, cmo))"
    )
}
"""

_HISTORY = f"""
INSERT INTO device_history (tenant_id, device_id, recorded_at, changed_fields, previous, current)
{_HISTORY_ROWS.format(rows=_HISTORY_INPUT.format(n=1))}
"""

_KEY_USES = """
UPDATE api_keys SET last_used_at = GREATEST(api_keys.last_used_at, to_timestamp(x.used))
FROM unnest($1::bytea[], $2::float8[]) AS x(digest, used)
WHERE api_keys.digest = x.digest
"""

_NO_ATTRIBUTES: Attributes = (None, None, None, None, None, None)


class _History:
    """History records as the rows of ``_HISTORY_INPUT``."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[list[object]] = []

    def add(
        self, key: DeviceKey, seen: float, previous: Attributes | None, current: Attributes
    ) -> None:
        self.rows.append(
            [key[0], key[1], seen, previous is None, *(previous or _NO_ATTRIBUTES), *current]
        )

    def add_from(
        self,
        key: DeviceKey,
        entry: PendingDevice,
        state: Attributes | None,
        stored_seen: float | None,
    ) -> tuple[Attributes | None, float | None]:
        """Records for ``entry``'s sightings on top of ``state``; returns the final state."""
        applied_at: float | None = None
        for seen, attributes in entry.changes:
            if stored_seen is not None and seen < stored_seen:
                continue  # another worker already wrote a newer sighting
            merged = attributes if state is None else merge_attributes(attributes, state)
            if state is None or merged != state:
                self.add(key, seen, state, merged)
            state, applied_at = merged, seen
        return state, applied_at


def _device_rows(
    keys: Sequence[DeviceKey],
    batch: Mapping[DeviceKey, PendingDevice],
    finals: Sequence[tuple[Attributes | None, float | None]],
) -> str:
    rows = [
        _device_row(key, batch[key], state or _NO_ATTRIBUTES, seen)
        for key, (state, seen) in zip(keys, finals, strict=True)
    ]
    return _json(rows)


def _one_sighting_rows(keys: Sequence[DeviceKey], batch: Mapping[DeviceKey, PendingDevice]) -> str:
    """``_DEVICE_ROWS`` with each device's only sighting, before comparing with what is stored."""
    rows = []
    for key in keys:
        entry = batch[key]
        seen, attributes = entry.changes[0]
        rows.append(_device_row(key, entry, attributes, seen))
    return _json(rows)


def _device_row(
    key: DeviceKey, entry: PendingDevice, attributes: Attributes, seen: float | None
) -> list[object]:
    """One row of ``_DEVICE_ROWS``."""
    return [
        key[0],
        key[1],
        *attributes,
        seen,
        entry.first_seen,
        entry.last_active,
        entry.last_upload,
    ]


def _json(rows: list[list[object]]) -> str:
    return json.dumps(rows, separators=(",", ":"))


async def _insert_new(
    conn: _Connection, keys: list[DeviceKey], batch: Mapping[DeviceKey, PendingDevice]
) -> list[DeviceKey]:
    """Phase 1; returns the keys that already existed (in key order)."""
    history = _History()
    finals = [history.add_from(key, batch[key], None, None) for key in keys]
    rows = await conn.fetch(_INSERT_NEW, _device_rows(keys, batch, finals), _json(history.rows))
    return [keys[row[0]] for row in rows]


async def _update_known(
    conn: _Connection, keys: list[DeviceKey], batch: Mapping[DeviceKey, PendingDevice]
) -> None:
    """Phase 2: lock, compare with what is stored, upsert, and write the changes."""
    # All or none: both forms take their locks in one key-ordered pass, and a piece split between
    # them would take two, which could deadlock with another worker's piece split differently.
    if all(len(batch[key].changes) == 1 for key in keys):
        await conn.execute(_KNOWN_ONE_SIGHTING, _one_sighting_rows(keys, batch))
        return
    locked = await conn.fetch(_LOCK_CURRENT, _json([[k[0], k[1]] for k in keys]))
    current = {(r[0], r[1]): r for r in locked}
    history = _History()
    finals = []
    for key in keys:
        old = current.get(key)
        stored_seen: float | None = old[8] if old is not None else None
        state: Attributes | None = (
            None
            if old is None or stored_seen is None
            else (old[2], old[3], old[4], old[5], old[6], old[7])
        )
        finals.append(history.add_from(key, batch[key], state, stored_seen))
    await conn.execute(_UPSERT, _device_rows(keys, batch, finals))
    if history.rows:
        await conn.execute(_HISTORY, _json(history.rows))


async def _write(
    conn: _Connection,
    batch: Mapping[DeviceKey, PendingDevice],
    key_uses: Mapping[str, float],
    known: Container[DeviceKey] | None,
) -> None:
    keys = sorted(batch)
    if keys:
        new = keys if known is None else [k for k in keys if k not in known]
        existing = await _insert_new(conn, new, batch) if new else []
        if known is not None and len(existing) + len(new) != len(keys):
            existing = sorted([*existing, *(k for k in keys if k in known)])
        if existing:
            await _update_known(conn, existing, batch)
    if key_uses:
        await conn.execute(_KEY_USES, [bytes.fromhex(d) for d in key_uses], list(key_uses.values()))


async def write_batch(
    pool: asyncpg.Pool,
    batch: Mapping[DeviceKey, PendingDevice],
    key_uses: Mapping[str, float],
    known: Container[DeviceKey] | None = None,
    *,
    timeout: float,
) -> None:
    """Write ``batch`` in one transaction, within ``timeout`` seconds from acquiring a
    connection to the commit; devices in ``known`` are already in Postgres (phase 1 skips them).

    Returns only once the commit is acknowledged. On any failure (the deadline included) the
    connection is dropped, not rolled back: a hung server would never answer the ROLLBACK (nor
    the pool's reset), and a dropped connection rolls back on the server anyway.
    """
    ms = max(1, int(timeout * 1000))
    conn: asyncpg.pool.PoolConnectionProxy | None = None
    try:
        async with asyncio.timeout(timeout):
            conn = await pool.acquire()
            # Server-side limits in the same round trip as BEGIN: a statement stuck behind a row
            # lock is abandoned by Postgres itself, and if this client vanishes mid-transaction
            # (a partition, no FIN) its row locks are released instead of blocking other flushes.
            await conn.execute(
                f"BEGIN; SET LOCAL statement_timeout = {ms};"
                f" SET LOCAL idle_in_transaction_session_timeout = {ms}"
            )
            await _write(conn, batch, key_uses, known)
            await conn.execute("COMMIT")
    except BaseException:
        if conn is not None:
            conn.terminate()
        raise
    finally:
        if conn is not None:
            # Committed (or terminated) by now; a reset that hangs only costs the connection.
            with contextlib.suppress(Exception):
                await pool.release(conn, timeout=timeout)
