-- Clone detection (issue 14, docs/decisions.md "Clone detection"): a history record that takes a
-- device back to the hardware (manufacturer + model) it had just left, within the window, is a
-- conflict, the sign of two physical devices sharing one id.
--
-- `conflict_since` flags the record: the time of the record that left this hardware (NULL for a
-- record that is no conflict). It lives on the record so the `device.conflict` event, written by
-- the same statement, can carry both timestamps.
ALTER TABLE device_history ADD COLUMN conflict_since timestamptz;

-- The device's latest conflict. On `device_activity`, the flush's own row: the flush already
-- holds that row's lock when it writes a record, and never locks a `devices` row an admin may
-- hold (the lock order of migration 0004).
ALTER TABLE device_activity ADD COLUMN conflict_at timestamptz;

-- The view expanded `a.*`-style column lists when it was created: recreate it to carry the new
-- column (same columns, one more at the end).
CREATE OR REPLACE VIEW devices_with_activity AS
SELECT d.*, a.application, a.application_version, a.os, a.os_version, a.manufacturer, a.model,
       a.attributes_seen_at, a.first_seen_at, a.last_active_at, a.last_data_upload_at,
       a.last_activity_at, a.conflict_at
FROM devices d
LEFT JOIN device_activity a ON a.tenant_id = d.tenant_id AND a.device_id = d.device_id;

-- The outbox rows the flush writes (one per history record, issue 14) pay for every index of
-- `event_outbox`; two of them serve no reader (`python -m benchmarks flushevents`, figures in
-- docs/performance.md, "Registration events on the flush"):
-- - `(tenant_id, id)`: nothing reads the outbox by tenant; the dispatcher claims pending events
--   by id (`event_outbox_pending`) and deliveries have their own indexes. A tenant-scoped
--   listing of events, if one comes, brings it back, measured against the same flood.
-- - the UNIQUE index on `event_id`: nothing looks an event up by it (deliveries copy it), and
--   `gen_random_uuid()` draws 122 random bits: a collision among a billion events has a chance
--   of about 1e-19. Receivers still de-duplicate on it.
DROP INDEX IF EXISTS event_outbox_tenant;
ALTER TABLE event_outbox DROP CONSTRAINT IF EXISTS event_outbox_event_id_key;
