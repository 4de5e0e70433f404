"""Clone detection in the flush's SQL (issue 14; docs/decisions.md, "Clone detection").

A history record is a conflict when it takes a device back to the hardware (manufacturer +
model) that the device's previous hardware change left, within the window: A, then B, then A
again. The previous hardware change is the latest record of the device, before this one, whose
hardware differs from its previous hardware: in ``device_history``, or earlier in the same
statement (a device seen several times in one batch). Set-based: one lateral look-up per
record that changes the hardware (an index range scan of the device's last window of history),
none at all for the records that do not, which are nearly all of them.

The window travels as ``SET LOCAL gatekeeper.clone_window`` (seconds) with the flush's
``BEGIN``, and is compared with the records' own times (the request times the recorder stamped
with its clock), so a test with a fake clock decides what falls inside it.
"""

from __future__ import annotations

__all__ = ["CONFLICTS", "MARK_CONFLICTS", "window_setting"]

_WINDOW = "(current_setting('gatekeeper.clone_window')::float8 * interval '1 second')"


def window_setting(seconds: float) -> str:
    """The ``SET LOCAL`` that passes the window to the statements of one flush."""
    return f"SET LOCAL gatekeeper.clone_window = '{float(seconds)!r}'"


# Two CTEs over ``records`` (the statement's history records: t, d, r, first, p*, c*, and an
# ordinal k): ``changes``, the records that change the hardware, and ``conflicts`` (k, since),
# those of them that undo the device's previous hardware change within the window, with the time
# of that change. ``src`` puts this statement's records after the stored ones at an equal time.
CONFLICTS = f"""changes AS (
    SELECT k, t, d, r, pm, pmo, cm, cmo FROM records
    WHERE NOT first AND (pm, pmo) IS DISTINCT FROM (cm, cmo)
), conflicts AS (
    SELECT c.k, q.r AS since
    FROM changes c
    CROSS JOIN LATERAL (
        SELECT * FROM (
            SELECT h.recorded_at AS r, 0 AS src, h.id AS n,
                   h.previous->>'manufacturer' AS pm, h.previous->>'model' AS pmo,
                   h.current->>'manufacturer' AS cm, h.current->>'model' AS cmo
            FROM device_history h
            WHERE h.tenant_id = c.t AND h.device_id = c.d
              AND h.recorded_at >= c.r - {_WINDOW} AND h.recorded_at <= c.r
              AND h.previous IS NOT NULL
              AND h.changed_fields && ARRAY['manufacturer', 'model']
            UNION ALL
            SELECT o.r, 1, o.k, o.pm, o.pmo, o.cm, o.cmo FROM changes o
            WHERE o.t = c.t AND o.d = c.d AND (o.r, o.k) < (c.r, c.k)
        ) AS earlier
        ORDER BY r DESC, src DESC, n DESC
        LIMIT 1
    ) AS q
    WHERE (q.pm, q.pmo) IS NOT DISTINCT FROM (c.cm, c.cmo)
      AND (q.cm, q.cmo) IS NOT DISTINCT FROM (c.pm, c.pmo)
      AND q.r >= c.r - {_WINDOW}
)"""

# After the history statements of a flush: the devices of the conflicting records (``$1``, their
# history ids) get their latest conflict time. Their activity rows are already locked by this
# transaction (it wrote them), so this waits for nobody; it runs only when there was a conflict.
MARK_CONFLICTS = """
UPDATE device_activity AS a SET conflict_at = GREATEST(a.conflict_at, c.at)
FROM (SELECT tenant_id, device_id, max(recorded_at) AS at FROM device_history
      WHERE id = ANY($1::bigint[]) GROUP BY tenant_id, device_id) AS c
WHERE a.tenant_id = c.tenant_id AND a.device_id = c.device_id
"""
