-- Activity write-behind (see gatekeeper/activity_sql.py and docs/decisions.md, "Activity recorder").
--
-- The foreign key from device_history to devices cost a row-level referential check (an index
-- probe and a row lock) for every history record, about a fifth of a flush of new devices. The
-- only writer of history is the activity flush, which writes the device row first in the same
-- transaction, so the check never fails. What the key gave besides the check, removing a
-- device's history with the device, is kept by one statement-level trigger.

ALTER TABLE device_history DROP CONSTRAINT IF EXISTS device_history_tenant_id_device_id_fkey;

CREATE FUNCTION devices_delete_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM device_history h
    USING gone g
    WHERE h.tenant_id = g.tenant_id AND h.device_id = g.device_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_delete_history
    AFTER DELETE ON devices
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION devices_delete_history();
