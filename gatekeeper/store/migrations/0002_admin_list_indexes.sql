-- Indexes for the admin API's device list (see admin_api/listing.py and docs/decisions.md).
--
-- The list is ordered by last_activity_at DESC, never-active devices (NULL, sorted as -infinity)
-- last, ties by device_id DESC; each page is a keyset range scan on one of the first two
-- indexes, so a deep page costs what the first page costs. The trigram indexes serve `q`
-- (ILIKE '%…%' on name or device_id) when the term is selective; for a common term the planner
-- walks the order index and filters, which stops after one page of matches.

CREATE INDEX devices_by_activity
    ON devices (tenant_id, (COALESCE(last_activity_at, '-infinity'::timestamptz)) DESC,
                device_id DESC);

CREATE INDEX devices_blocked_by_activity
    ON devices (tenant_id, (COALESCE(last_activity_at, '-infinity'::timestamptz)) DESC,
                device_id DESC)
    WHERE is_blocked;

CREATE INDEX devices_name_trgm ON devices USING gin (name gin_trgm_ops);
CREATE INDEX devices_device_id_trgm ON devices USING gin (device_id gin_trgm_ops);
