"""Clone detection in the flush's SQL (issue 14; docs/decisions.md, "Clone detection").

A history record is a conflict when it takes a device back to the hardware (manufacturer +
model) that the device's previous hardware change left, within the window: A, then B, then A
again. The previous hardware change is the latest record of the device, before this one, whose
hardware differs from its previous hardware: in ``device_history``, or earlier in the same
statement (a device seen several times in one batch). Set-based: a window function over the
statement's own hardware changes, and one index look-up in the device's last window of history
per device whose hardware changes; nothing at all for the records that change no hardware,
which are nearly all of them.

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


# CTEs over ``records`` (the statement's history records: t, d, r, first, p*, c*, and an
# ordinal k): ``changes``, the records that change the hardware, each with the device's change
# before it in this statement (``lag``: a sort, not a search, however many times a clone flips
# within one batch); ``conflicts`` (k, since), those that undo the device's previous hardware
# change within the window, with the time of that change; and ``conflict_map``, one row holding
# them as a JSON object by k, which the history insert reads per record (a join would be a
# nested loop, quadratic in a clone storm, under the plan settings of phase 2; unmaterialized,
# the planner re-ran the window per record). A device's first change in the statement looks its
# previous one up in ``device_history``: the latest record at or before it (by the history index,
# newest first) that changed the hardware, within the window.
CONFLICTS = f"""changes AS MATERIALIZED (
    SELECT k, t, d, r, pm, pmo, cm, cmo,
           row_number() OVER w AS nth, lag(r) OVER w AS lr,
           lag(pm) OVER w AS lpm, lag(pmo) OVER w AS lpmo,
           lag(cm) OVER w AS lcm, lag(cmo) OVER w AS lcmo
    FROM records
    WHERE NOT first AND (pm, pmo) IS DISTINCT FROM (cm, cmo)
    WINDOW w AS (PARTITION BY t, d ORDER BY r, k)
), conflicts AS (
    SELECT c.k, q.r AS since
    FROM changes c
    CROSS JOIN LATERAL (
        SELECT c.lr AS r, c.lpm AS pm, c.lpmo AS pmo, c.lcm AS cm, c.lcmo AS cmo
        WHERE c.nth > 1
        UNION ALL
        (SELECT h.recorded_at, h.previous->>'manufacturer', h.previous->>'model',
                h.current->>'manufacturer', h.current->>'model'
         FROM device_history h
         WHERE c.nth = 1 AND h.tenant_id = c.t AND h.device_id = c.d
           AND h.recorded_at >= c.r - {_WINDOW} AND h.recorded_at <= c.r
           AND h.previous IS NOT NULL
           AND h.changed_fields && ARRAY['manufacturer', 'model']
         ORDER BY h.recorded_at DESC, h.id DESC
         LIMIT 1)
    ) AS q
    WHERE (q.pm, q.pmo) IS NOT DISTINCT FROM (c.cm, c.cmo)
      AND (q.cm, q.cmo) IS NOT DISTINCT FROM (c.pm, c.pmo)
      AND q.r >= c.r - {_WINDOW}
), conflict_map AS MATERIALIZED (
    SELECT jsonb_object_agg(k, since) AS m FROM conflicts
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
