"""The statements of one activity flush, as text; :mod:`gatekeeper.edge.activity.sql` runs them
and its docstring says in which order and why.

Rows travel as one ``jsonb`` parameter per statement, an array of arrays: ``_DEVICE_ROWS`` reads
device rows, ``_HISTORY_INPUT`` history records.
"""

from __future__ import annotations

from collections.abc import Sequence

from gatekeeper.edge.activity.conflicts import CONFLICTS

__all__ = [
    "HISTORY",
    "INSERT_NEW",
    "INSERT_NEW_NO_EVENTS",
    "KEY_USES",
    "KNOWN_ONE_SIGHTING",
    "LOCK_CURRENT",
    "UPSERT",
]


def _columns(names: str, types: Sequence[str]) -> str:
    """``(e->>0)::type AS name, …`` for rows sent as a JSON array of arrays; a time travels as
    integer microseconds since the epoch (``json.dumps`` writes an integer in a third of the time
    it takes for a float) and becomes a ``timestamptz`` here."""
    return ", ".join(
        f"to_timestamp((e->>{i})::float8 / 1000000) AS {name}"
        if kind == "micros"
        else f"(e->>{i})::{kind} AS {name}"
        for i, (name, kind) in enumerate(zip(names.split(), types, strict=True))
    )


# A device row: tenant, device, the six attributes, attributes seen at, first seen, last active,
# last upload.
_DEVICE_ROWS = "SELECT {cols} FROM jsonb_array_elements(${n}::jsonb) AS x(e)".replace(
    "{cols}",
    _columns(
        "t d a v o ov m mo seen first_seen last_active last_upload", ("text",) * 8 + ("micros",) * 4
    ),
)
# A history record: tenant, device, seen at, is-first-sighting, the six previous attributes, the
# six current attributes.
_HISTORY_INPUT = "SELECT {cols} FROM jsonb_array_elements(${n}::jsonb) AS x(e)".replace(
    "{cols}",
    _columns(
        "t d r first pa pv po pov pm pmo ca cv co cov cm cmo",
        ("text", "text", "micros", "bool") + ("text",) * 12,
    ),
)

# The rows of a history insert, from the ``records`` CTE (see ``_records``) and the conflicts
# found among them (``conflicts.CONFLICTS``: ``conflict_map``).
_HISTORY_ROWS = """
SELECT h.t, h.d, h.r,
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
           'manufacturer', h.cm, 'model', h.cmo),
       (conflict_map.m ->> h.k::text)::timestamptz
FROM records AS h CROSS JOIN conflict_map
ORDER BY h.k
"""

_HISTORY_COLUMNS = (
    "tenant_id, device_id, recorded_at, changed_fields, previous, current, conflict_since"
)
_HISTORY_RETURNING = f"RETURNING id, {_HISTORY_COLUMNS}"


def _records(rows: str) -> str:
    """The CTEs that lead to a history insert: ``records`` (``rows`` numbered), and the clone
    detection's ``changes`` and ``conflicts`` over them."""
    return f"""records AS (
    SELECT rows.*, row_number() OVER () AS k FROM ({rows}) AS rows
), {CONFLICTS}"""


# The outbox events of the history records ``history`` returned (issue 14), in the flush's
# transaction so that a rolled-back flush leaves none: a first sighting (``previous`` NULL) is
# ``device.registered``, any later record ``device.changed``. Ordered by the history id, so a
# device's events get ascending outbox ids in the order its records were written. A record
# flagged as a conflict (clone detection) has a ``device.conflict`` right after its own event.
_EVENTS = """
INSERT INTO event_outbox (tenant_id, device_id, type, data)
SELECT tenant_id, device_id, type, data FROM (
    SELECT id, false AS second, tenant_id, device_id,
           CASE WHEN previous IS NULL THEN 'device.registered' ELSE 'device.changed' END AS type,
           CASE WHEN previous IS NULL
                THEN jsonb_build_object('deviceId', device_id, 'recordedAt', recorded_at,
                                        'attributes', current)
                ELSE jsonb_build_object('deviceId', device_id, 'recordedAt', recorded_at,
                                        'changedFields', to_jsonb(changed_fields),
                                        'previous', previous, 'current', current) END AS data
    FROM history
    UNION ALL
    SELECT id, true, tenant_id, device_id, 'device.conflict',
           jsonb_build_object(
               'deviceId', device_id,
               'hardware', jsonb_build_object('manufacturer', current->'manufacturer',
                                              'model', current->'model'),
               'otherHardware', jsonb_build_object('manufacturer', previous->'manufacturer',
                                                   'model', previous->'model'),
               'otherSeenAt', conflict_since, 'recordedAt', recorded_at)
    FROM history WHERE conflict_since IS NOT NULL
) AS e ORDER BY id, second
"""

# What a history statement returns: the ids of its records flagged as conflicts.
_CONFLICT_IDS = "SELECT id FROM history WHERE conflict_since IS NOT NULL"

_ACTIVITY_COLUMNS = """tenant_id, device_id, application, application_version, os, os_version,
    manufacturer, model, attributes_seen_at, first_seen_at, last_active_at, last_data_upload_at"""


def _insert_new(events: bool) -> str:
    return f"""
WITH input AS (
    SELECT rows.*, row_number() OVER () AS i FROM ({_DEVICE_ROWS.format(n=1)}) AS rows
), inserted AS (
    INSERT INTO devices (tenant_id, device_id)
    SELECT t, d FROM input ORDER BY i
    ON CONFLICT (tenant_id, device_id) DO NOTHING
    RETURNING tenant_id, device_id
), activity AS (
    INSERT INTO device_activity ({_ACTIVITY_COLUMNS})
    SELECT t, d, a, v, o, ov, m, mo, seen, first_seen, last_active, last_upload
    FROM input
    JOIN inserted ON inserted.tenant_id = input.t AND inserted.device_id = input.d
    ORDER BY i
), more AS (
    {_HISTORY_INPUT.format(n=2)}
), {
        _records(
            "SELECT rows.* FROM (SELECT * FROM more UNION ALL"
            " SELECT t, d, seen, true, NULL, NULL, NULL, NULL, NULL, NULL, a, v, o, ov, m, mo"
            " FROM input WHERE NOT EXISTS (SELECT FROM more WHERE more.t = input.t"
            " AND more.d = input.d)) AS rows"
            " JOIN inserted ON inserted.tenant_id = rows.t AND inserted.device_id = rows.d"
        )
    }, history AS (
    INSERT INTO device_history ({_HISTORY_COLUMNS})
    {_HISTORY_ROWS}
    {_HISTORY_RETURNING}
){f", events AS ({_EVENTS})" if events else ""}
(SELECT i - 1, NULL::bigint FROM input
 WHERE NOT EXISTS (SELECT FROM inserted WHERE inserted.tenant_id = input.t
                                          AND inserted.device_id = input.d)
 ORDER BY i)
UNION ALL ({_CONFLICT_IDS.replace("SELECT id", "SELECT NULL, id")})
"""


# Phase 1. The keys come sorted; ORDER BY ordinality keeps the insert (and its locks) in that order.
# A device seen once in the batch (nearly every one) has one history record, its first sighting,
# made here from its device row; ``$2`` holds the records of the devices seen more than once.
# The activity rows are written here, with their times; the trigger that adds them for other
# writers of ``devices`` skips the flush's transactions (``gatekeeper.flush``, migration 0004).
# Returns a row (index in the input, NULL) per device that already existed, in input order, and
# a row (NULL, history id) per record flagged as a conflict.
INSERT_NEW = _insert_new(events=True)
# The same without the outbox writes: for ``python -m benchmarks flushevents``, which measures
# what the events cost the flush.
INSERT_NEW_NO_EVENTS = _insert_new(events=False)

LOCK_CURRENT = """
SELECT a.tenant_id, a.device_id, a.application, a.application_version, a.os, a.os_version,
       a.manufacturer, a.model, extract(epoch FROM a.attributes_seen_at)::float8
FROM device_activity a
JOIN (SELECT e->>0 AS tenant_id, e->>1 AS device_id FROM jsonb_array_elements($1::jsonb) AS x(e))
    AS k USING (tenant_id, device_id)
ORDER BY a.tenant_id, a.device_id
FOR UPDATE OF a
"""

# A device deleted since phase 1 comes back, as any device that calls again does: its ``devices``
# row is inserted again (the rows of ``{rows}`` whose activity row was missing, ``{missing}``).
# Only those: probing ``devices`` for a row an admin is deleting would wait for that delete, which
# itself waits for the activity row this flush holds.
_REVIVE = """revived AS (
    INSERT INTO devices (tenant_id, device_id)
    SELECT t, d FROM {rows} WHERE {missing} ORDER BY i
    ON CONFLICT (tenant_id, device_id) DO NOTHING
)"""

# The activity rows of ``{source}`` after the comparison with what is stored, as an upsert: a
# missing row is a device deleted since phase 1. A row whose sighting is not applied (stale) carries
# ``seen`` NULL and keeps its stored attributes.
_ACTIVITY_UPSERT = f"""
INSERT INTO device_activity AS d ({_ACTIVITY_COLUMNS})
SELECT t, d, a, v, o, ov, m, mo, seen, first_seen, last_active, last_upload
FROM {{source}} ORDER BY i
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

# Phase 2 for pieces with several sightings of a device, after ``LOCK_CURRENT`` and the
# comparison in Python (``_History.add_from``).
UPSERT = f"""
WITH rows AS (
    SELECT x.*, row_number() OVER () AS i FROM ({_DEVICE_ROWS.format(n=1)}) AS x
), {
    _REVIVE.format(
        rows="rows",
        missing="NOT EXISTS (SELECT FROM device_activity s WHERE s.tenant_id = t"
        " AND s.device_id = d)",
    )
}
{_ACTIVITY_UPSERT.format(source="rows")}"""

# Phase 2 in one statement, for pieces whose every device has one sighting in the batch (a touch,
# or one attribute change). One UPDATE locks each row, compares the sighting with the row as locked
# (its latest version: SET expressions are evaluated on it) and applies it, as
# ``_History.add_from`` would: a missing header keeps the stored value, a sighting older than
# ``attributes_seen_at`` is not applied, a row never sighted takes it as its first. When the
# attributes change, the row's ``replaced`` column receives what they were ('null' for a first
# sighting) and RETURNING hands it to the history insert; a pure touch writes NULL there and the
# times, nothing else. Rows are locked in key order: the input is in key order and drives a nested
# loop over the primary key (``tests/test_activity_sql.py`` holds the plan to that). A device
# without an activity row was deleted since phase 1 and comes back, with a first sighting.
_ATTRS = (
    ("a", "application"),
    ("v", "application_version"),
    ("o", "os"),
    ("ov", "os_version"),
    ("m", "manufacturer"),
    ("mo", "model"),
)
_STALE = "x.attributes_seen_at IS NOT NULL AND input.seen < x.attributes_seen_at"
_MERGED = [
    f"CASE WHEN x.attributes_seen_at IS NULL THEN input.{i}"
    f" ELSE COALESCE(NULLIF(input.{i}, ''), x.{column}) END"
    for i, column in _ATTRS
]
_SET_ATTRIBUTES = ",\n        ".join(
    f"{column} = CASE WHEN {_STALE} THEN x.{column} ELSE {merged} END"
    for (_, column), merged in zip(_ATTRS, _MERGED, strict=True)
)
_REPLACED = f"""CASE WHEN {_STALE} THEN NULL
                         WHEN x.attributes_seen_at IS NULL THEN 'null'::jsonb
                         WHEN ({", ".join(_MERGED)})
                              IS DISTINCT FROM ({", ".join(f"x.{c}" for _, c in _ATTRS)})
                         THEN jsonb_build_object({
    ", ".join(f"'{c}', x.{c}" for _, c in _ATTRS)
}) END"""

KNOWN_ONE_SIGHTING = f"""
WITH input AS (
    SELECT rows.*, row_number() OVER () AS i
    FROM ({_DEVICE_ROWS.format(n=1)}) AS rows
), updated AS (
    UPDATE device_activity AS x SET
        {_SET_ATTRIBUTES},
        replaced = {_REPLACED},
        attributes_seen_at = GREATEST(x.attributes_seen_at, input.seen),
        first_seen_at = LEAST(x.first_seen_at, input.first_seen),
        last_active_at = GREATEST(x.last_active_at, input.last_active),
        last_data_upload_at = GREATEST(x.last_data_upload_at, input.last_upload)
    FROM input
    WHERE x.tenant_id = input.t AND x.device_id = input.d
    RETURNING x.tenant_id AS t, x.device_id AS d, input.seen AS r, x.replaced,
              {", ".join(f"x.{c} AS c{i}" for i, c in _ATTRS)}
), missing AS (
    -- The counts first: a one-time filter, so that the (nested-loop) anti-join runs only when a
    -- row is missing, which is rare.
    SELECT * FROM input
    WHERE (SELECT count(*) FROM updated) < (SELECT count(*) FROM input)
      AND NOT EXISTS (SELECT FROM updated u WHERE u.t = input.t AND u.d = input.d)
), {_REVIVE.format(rows="missing", missing="true")}, revived_activity AS (
    {_ACTIVITY_UPSERT.format(source="missing")}
), {
    _records(
        "SELECT t, d, r, replaced = 'null'::jsonb AS first, "
        + ", ".join(f"replaced->>'{c}' AS p{i}" for i, c in _ATTRS)
        + ", "
        + ", ".join(f"c{i}" for i, _ in _ATTRS)
        + " FROM updated WHERE replaced IS NOT NULL"
        " UNION ALL SELECT t, d, seen, true, NULL, NULL, NULL, NULL, NULL, NULL, a, v, o, ov, m, mo"
        " FROM missing"
    )
}, history AS (
INSERT INTO device_history ({_HISTORY_COLUMNS})
{_HISTORY_ROWS}
{_HISTORY_RETURNING}
), events AS ({_EVENTS})
{_CONFLICT_IDS}"""

HISTORY = f"""
WITH {_records(_HISTORY_INPUT.format(n=1))}, history AS (
INSERT INTO device_history ({_HISTORY_COLUMNS})
{_HISTORY_ROWS}
{_HISTORY_RETURNING}
), events AS ({_EVENTS})
{_CONFLICT_IDS}"""

KEY_USES = """
UPDATE api_keys SET last_used_at = GREATEST(api_keys.last_used_at, to_timestamp(x.used))
FROM unnest($1::bytea[], $2::float8[]) AS x(digest, used)
WHERE api_keys.digest = x.digest
"""
