-- Per-tenant settings (issue 13): for now the stale-device retention. A tenant without a row has
-- every setting at its default (no retention). See docs/decisions.md, "Stale devices".
CREATE TABLE tenant_settings (
    tenant_id          text        PRIMARY KEY,
    -- Delete unblocked devices inactive for longer than this many days; NULL: keep them.
    stale_device_days  integer     CHECK (stale_device_days BETWEEN 1 AND 36500),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- When each periodic admin job last ran, shared by every admin replica: the daily stale-device
-- job runs under an advisory lock and only when its last run is a day old.
CREATE TABLE admin_jobs (
    name         text        PRIMARY KEY,
    last_run_at  timestamptz NOT NULL
);
