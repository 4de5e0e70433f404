-- Shadow blocks (issue 13): a block is either enforced (the edge answers 403) or shadow (the edge
-- forwards the request and counts it as shadow_blocked). `block_mode` is the block's mode, NULL
-- exactly when the device is not blocked; `is_blocked` keeps meaning "a block exists, in either
-- mode", so the list's `blocked` filter, "blocked devices are never deleted" and the activity
-- copy (0004) keep their meaning. See docs/decisions.md, "Shadow blocks".

ALTER TABLE devices
    ADD COLUMN block_mode text CHECK (block_mode IN ('enforce', 'shadow'));

UPDATE devices SET block_mode = 'enforce' WHERE is_blocked;

-- Any writer that blocks without naming a mode (an older admin, a bulk statement) gets an
-- enforced block; any unblock clears the mode. The invariant holds whoever writes.
CREATE FUNCTION devices_block_mode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.is_blocked THEN
        NEW.block_mode := NULL;
    ELSIF NEW.block_mode IS NULL THEN
        NEW.block_mode := 'enforce';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER devices_block_mode
    BEFORE UPDATE OF is_blocked, block_mode ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_block_mode();

-- Inserts: only a blocked one needs it (the WHEN is evaluated without calling PL/pgSQL, so the
-- activity flush's inserts of new devices pay nothing).
CREATE TRIGGER devices_block_mode_insert
    BEFORE INSERT ON devices
    FOR EACH ROW WHEN (NEW.is_blocked OR NEW.block_mode IS NOT NULL)
    EXECUTE FUNCTION devices_block_mode();

ALTER TABLE devices
    ADD CONSTRAINT devices_block_mode_set CHECK ((block_mode IS NOT NULL) = is_blocked);

-- The view expanded `d.*` when it was created: recreate it to carry the new column.
DROP VIEW devices_with_activity;
CREATE VIEW devices_with_activity AS
SELECT d.*, a.application, a.application_version, a.os, a.os_version, a.manufacturer, a.model,
       a.attributes_seen_at, a.first_seen_at, a.last_active_at, a.last_data_upload_at,
       a.last_activity_at
FROM devices d
LEFT JOIN device_activity a ON a.tenant_id = d.tenant_id AND a.device_id = d.device_id;
