-- What the edge observes of a device moves out of `devices` into a narrow table of its own
-- (docs/decisions.md, "Touches in a narrow table (issue 10, part 2)").
--
-- A touch ("active again") rewrote the whole `devices` row, and because it moved the list's
-- sort key it was a non-HOT update through every index of `devices`, two trigram GIN indexes
-- among them. Now `devices` holds what admins set (name, description, type, settings, enabled,
-- blocked) and is written by the flush only when a device first appears; `device_activity`
-- holds what the edge sees (the six attributes and when they were seen, first seen, last active,
-- last upload) plus a copy of the block state, so that the list's sort key and its indexes live
-- in the table a touch updates, next to nothing else.
--
-- A touch moves the sort key, so it cannot be a HOT update; fillfactor 70 leaves room for the new
-- version on the same page (one page written, not two), which cut the touch statement's server
-- time by about a quarter.
--
-- Invariants, kept by the triggers below: every `devices` row has exactly one `device_activity`
-- row (created with it, deleted with it), and `device_activity.is_blocked` / `.blocked_at`
-- equal those of `devices`. Lock order: the flush locks `device_activity` rows only (in key
-- order); an admin change locks the `devices` row, then (by trigger) its activity row.

CREATE TABLE device_activity (
    tenant_id            text        NOT NULL,
    device_id            text        NOT NULL,
    application          text,
    application_version  text,
    os                   text,
    os_version           text,
    manufacturer         text,
    model                text,
    -- When the request that produced the current attributes was seen (see 0001).
    attributes_seen_at   timestamptz,
    first_seen_at        timestamptz,
    last_active_at       timestamptz,
    last_data_upload_at  timestamptz,
    -- Copies of devices.is_blocked / devices.blocked_at (trigger devices_copy_block).
    is_blocked           boolean     NOT NULL DEFAULT false,
    blocked_at           timestamptz,
    -- Scratch for the flush (gatekeeper/edge/activity/sql.py): what its last update replaced, when
    -- that update changed the attributes ('null' for a first sighting), else NULL; read back by
    -- the same statement's RETURNING to write the history record.
    replaced             jsonb,
    -- The list's sort key: the later of last activity and block time (GREATEST skips NULLs).
    last_activity_at     timestamptz GENERATED ALWAYS AS (GREATEST(last_active_at, blocked_at)) STORED,
    PRIMARY KEY (tenant_id, device_id)
) WITH (fillfactor = 70);

INSERT INTO device_activity (tenant_id, device_id, application, application_version, os,
                             os_version, manufacturer, model, attributes_seen_at, first_seen_at,
                             last_active_at, last_data_upload_at, is_blocked, blocked_at)
SELECT tenant_id, device_id, application, application_version, os, os_version, manufacturer,
       model, attributes_seen_at, first_seen_at, last_active_at, last_data_upload_at, is_blocked,
       blocked_at
FROM devices;

-- The list's order indexes (as in 0002), now on the activity table.
CREATE INDEX device_activity_by_activity
    ON device_activity (tenant_id, (COALESCE(last_activity_at, '-infinity'::timestamptz)) DESC,
                        device_id DESC);
CREATE INDEX device_activity_blocked_by_activity
    ON device_activity (tenant_id, (COALESCE(last_activity_at, '-infinity'::timestamptz)) DESC,
                        device_id DESC)
    WHERE is_blocked;

DROP INDEX devices_by_activity;
DROP INDEX devices_blocked_by_activity;
ALTER TABLE devices
    DROP COLUMN last_activity_at,
    DROP COLUMN application,
    DROP COLUMN application_version,
    DROP COLUMN os,
    DROP COLUMN os_version,
    DROP COLUMN manufacturer,
    DROP COLUMN model,
    DROP COLUMN attributes_seen_at,
    DROP COLUMN first_seen_at,
    DROP COLUMN last_active_at,
    DROP COLUMN last_data_upload_at;

-- A self-registered device has no name: indexing only named devices keeps a new device's
-- insert out of this index, and `name ILIKE …` (strict) still implies `name IS NOT NULL`.
DROP INDEX devices_name_trgm;
CREATE INDEX devices_name_trgm ON devices USING gin (name gin_trgm_ops) WHERE name IS NOT NULL;

-- Every way a device is created (the admin API, a block of an unknown device, a test) gets its
-- activity row. The flush inserts its own rows, with their times, and says so for its
-- transaction (SET LOCAL gatekeeper.flush = 'on'): the check here would cost it a probe per row.
CREATE FUNCTION devices_add_activity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('gatekeeper.flush', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO device_activity (tenant_id, device_id, is_blocked, blocked_at)
    SELECT tenant_id, device_id, is_blocked, blocked_at FROM born
    ON CONFLICT (tenant_id, device_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_add_activity
    AFTER INSERT ON devices
    REFERENCING NEW TABLE AS born
    FOR EACH STATEMENT EXECUTE FUNCTION devices_add_activity();

CREATE FUNCTION devices_copy_block() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE device_activity SET is_blocked = NEW.is_blocked, blocked_at = NEW.blocked_at
    WHERE tenant_id = NEW.tenant_id AND device_id = NEW.device_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_copy_block
    AFTER UPDATE OF is_blocked, blocked_at ON devices
    FOR EACH ROW
    WHEN (OLD.is_blocked IS DISTINCT FROM NEW.is_blocked
          OR OLD.blocked_at IS DISTINCT FROM NEW.blocked_at)
    EXECUTE FUNCTION devices_copy_block();

CREATE FUNCTION devices_delete_activity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM device_activity a
    USING gone g
    WHERE a.tenant_id = g.tenant_id AND a.device_id = g.device_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_delete_activity
    AFTER DELETE ON devices
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION devices_delete_activity();

-- A device as the admin API shows it: what admins set and what the edge saw, one row.
CREATE VIEW devices_with_activity AS
SELECT d.*, a.application, a.application_version, a.os, a.os_version, a.manufacturer, a.model,
       a.attributes_seen_at, a.first_seen_at, a.last_active_at, a.last_data_upload_at,
       a.last_activity_at
FROM devices d
LEFT JOIN device_activity a ON a.tenant_id = d.tenant_id AND a.device_id = d.device_id;
