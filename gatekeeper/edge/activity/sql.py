"""The SQL of one activity flush, in one transaction: new devices first, then known ones.

What the flush writes lives in ``device_activity`` (migration 0004): the six attributes and when
they were seen, first seen, last active, last upload, and the list's sort key. ``devices`` holds
what admins set; the flush writes it only when a device first appears (or comes back after a
delete). A touch is therefore an update of one narrow row with two btree indexes, not of the wide
``devices`` row and its trigram indexes.

1. Every device of the batch is inserted, in key order, into ``devices`` with
   ``ON CONFLICT DO NOTHING``; the same statement writes the activity rows and the history of the
   devices it did insert (their first sighting and any change seen after it in this batch) and
   returns which devices already existed. For a batch of new devices that is the whole flush: one
   round trip, nothing locked beyond the new rows.
2. The devices that already existed are compared with what is stored and updated, and their
   history records written. When every device of the piece has a single sighting in the batch (a
   touch, or one attribute change) that is one ``UPDATE`` of their activity rows
   (``KNOWN_ONE_SIGHTING``): it locks each row, compares the sighting with the row as locked and
   hands the replaced attributes of a changed row to the history insert. A pure touch rewrites one
   narrow row (times, ``attributes_seen_at``) and nothing else. Otherwise the rows are locked by
   ``ORDER BY … FOR UPDATE`` (``LOCK_CURRENT``), compared in Python, and upserted.

Both phases take their row locks in key order (phase 2's ``UPDATE`` is a nested loop driven by
the key-sorted input, which ``tests/test_activity_sql.py`` checks), phase 1 only waits for other
inserters of the same new keys, and phase 2 locks ``device_activity`` rows only (it inserts a
``devices`` row only for a device deleted meanwhile), never waiting for a ``devices`` row an admin
holds (an admin change locks the ``devices`` row first and its activity row after, by trigger), so
several workers or nodes flushing overlapping devices queue instead of deadlocking.
Timestamps only move forward (``GREATEST``), so a late flush never rewinds a device, and an
attribute sighting older than the stored one is never applied (``attributes_seen_at``). Devices a
worker has already written skip phase 1 (``known``): in steady state a flush is only phase 2.

Rows travel as one JSON text parameter per statement (an array of arrays), not as parallel
``unnest`` arrays: asyncpg encodes arrays element by element in Python-level code, while
``json.dumps`` is C, and the parsing then happens in Postgres, on another core than the proxy's.
The parameter is ``jsonb``: parsed once, where ``->>`` on ``json`` re-parses the element for every
column read.
Times travel as integer microseconds since the epoch and become ``timestamptz`` in SQL; history
documents and changed-field lists are built in SQL too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Container, Mapping, Sequence

import asyncpg

from gatekeeper.domain.identity import Attributes
from gatekeeper.edge.activity.conflicts import MARK_CONFLICTS, window_setting
from gatekeeper.edge.activity.pending import PendingDevice, merge_attributes
from gatekeeper.edge.activity.statements import (
    HISTORY,
    INSERT_NEW,
    KEY_USES,
    KNOWN_ONE_SIGHTING,
    LOCK_CURRENT,
    UPSERT,
)
from gatekeeper.types import DeviceKey

__all__ = ["DEFAULT_CLONE_WINDOW_SECONDS", "write_batch"]

_Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


_NO_ATTRIBUTES: Attributes = (None, None, None, None, None, None)

# The clone detection's window when the caller names none (``clone_window_seconds``).
DEFAULT_CLONE_WINDOW_SECONDS = 3600.0


class _History:
    """History records as the rows of ``HISTORY_INPUT``."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[list[object]] = []

    def add(
        self, key: DeviceKey, seen: float, previous: Attributes | None, current: Attributes
    ) -> None:
        self.rows.append(
            [
                key[0],
                key[1],
                round(seen * 1e6),
                previous is None,
                *(previous or _NO_ATTRIBUTES),
                *current,
            ]
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
    """Device rows with each device's only sighting, before comparing with what is stored."""
    rows = []
    for key in keys:
        entry = batch[key]
        seen, attributes = entry.changes[0]
        rows.append(_device_row(key, entry, attributes, seen))
    return _json(rows)


def _device_row(
    key: DeviceKey, entry: PendingDevice, attributes: Attributes, seen: float | None
) -> list[object]:
    """One row of ``statements._DEVICE_ROWS``."""
    upload = entry.last_upload
    return [
        key[0],
        key[1],
        *attributes,
        None if seen is None else round(seen * 1e6),
        round(entry.first_seen * 1e6),
        round(entry.last_active * 1e6),
        None if upload is None else round(upload * 1e6),
    ]


def _json(rows: list[list[object]]) -> str:
    return json.dumps(rows, separators=(",", ":"))


async def _insert_new(
    conn: _Connection,
    keys: list[DeviceKey],
    batch: Mapping[DeviceKey, PendingDevice],
    conflicts: list[int],
) -> list[DeviceKey]:
    """Phase 1; returns the keys that already existed (in key order), and adds the history ids
    of the records it flagged as conflicts to ``conflicts``."""
    history = _History()
    finals: list[tuple[Attributes | None, float | None]] = []
    for key in keys:
        entry = batch[key]
        if len(entry.changes) == 1:
            seen, attributes = entry.changes[0]
            finals.append((attributes, seen))  # its first sighting: written from its device row
        else:
            finals.append(history.add_from(key, entry, None, None))
    rows = await conn.fetch(INSERT_NEW, _device_rows(keys, batch, finals), _json(history.rows))
    conflicts.extend(row[1] for row in rows if row[1] is not None)
    return [keys[row[0]] for row in rows if row[0] is not None]


async def _update_known(
    conn: _Connection,
    keys: list[DeviceKey],
    batch: Mapping[DeviceKey, PendingDevice],
    conflicts: list[int],
) -> None:
    """Phase 2: lock, compare with what is stored, upsert, and write the changes (adding the
    history ids of the conflicts among them to ``conflicts``)."""
    # All or none: both forms take their locks in one key-ordered pass, and a piece split between
    # them would take two, which could deadlock with another worker's piece split differently.
    if all(len(batch[key].changes) == 1 for key in keys):
        rows = await conn.fetch(KNOWN_ONE_SIGHTING, _one_sighting_rows(keys, batch))
        conflicts.extend(row[0] for row in rows)
        return
    locked = await conn.fetch(LOCK_CURRENT, _json([[k[0], k[1]] for k in keys]))
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
    await conn.execute(UPSERT, _device_rows(keys, batch, finals))
    if history.rows:
        rows = await conn.fetch(HISTORY, _json(history.rows))
        conflicts.extend(row[0] for row in rows)


# Phase 2 locks rows in the order its statements visit them. With these, the only join left to
# the planner is a nested loop, and the only scans of a table are index scans: the touch UPDATE
# is driven by the key-sorted input (or by the primary key itself), whatever the table's size; on
# a small table it would otherwise hash the input and lock rows in their physical order. Phase 1
# runs before these are set: its joins are of 250-row CTEs, which hash.
_KEY_ORDER_PLANS = (
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;"
    " SET LOCAL enable_seqscan = off"
)


async def _write(
    conn: _Connection,
    begin: str,
    batch: Mapping[DeviceKey, PendingDevice],
    key_uses: Mapping[str, float],
    known: Container[DeviceKey] | None,
) -> int:
    """``begin``, then both phases; the plan settings travel with the last statement before
    phase 2 (``begin`` itself in steady state, when phase 1 has nothing to insert). Returns the
    conflicts found (clone detection)."""
    keys = sorted(batch)
    new = keys if known is None else [k for k in keys if k not in known]
    settings = _KEY_ORDER_PLANS
    conflicts: list[int] = []
    if new:
        await conn.execute(begin)
        existing = await _insert_new(conn, new, batch, conflicts)
    else:
        existing, settings = [], f"{begin}; {settings}"
    if known is not None and len(existing) + len(new) != len(keys):
        existing = sorted([*existing, *(k for k in keys if k in known)])
    if existing or not new:
        await conn.execute(settings)
    if existing:
        await _update_known(conn, existing, batch, conflicts)
    if conflicts:
        # Rare (a clone at work): one more statement, for the devices' ``conflict_at``.
        await conn.execute(MARK_CONFLICTS, conflicts)
    if key_uses:
        await conn.execute(KEY_USES, [bytes.fromhex(d) for d in key_uses], list(key_uses.values()))
    return len(conflicts)


async def write_batch(
    pool: asyncpg.Pool,
    batch: Mapping[DeviceKey, PendingDevice],
    key_uses: Mapping[str, float],
    known: Container[DeviceKey] | None = None,
    *,
    timeout: float,
    clone_window: float = DEFAULT_CLONE_WINDOW_SECONDS,
) -> int:
    """Write ``batch`` in one transaction, within ``timeout`` seconds from acquiring a
    connection to the commit; devices in ``known`` are already in Postgres (phase 1 skips them).
    Returns the number of history records flagged as conflicts (clone detection, within
    ``clone_window`` seconds).

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
            # ``gatekeeper.flush``: this transaction writes its devices' activity rows itself
            # (the trigger that adds them for other writers skips it; migration 0004).
            begin = (
                f"BEGIN; SET LOCAL statement_timeout = {ms};"
                f" SET LOCAL idle_in_transaction_session_timeout = {ms};"
                " SET LOCAL gatekeeper.flush = 'on';"
                f" {window_setting(clone_window)}"
            )
            conflicts = await _write(conn, begin, batch, key_uses, known)
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
    return conflicts
