-- The gatekeeper's source of truth. Every table is keyed by tenant first: tenant isolation is
-- part of every primary key and every index, so no query can reach across tenants by accident.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE devices (
    tenant_id            text        NOT NULL,
    device_id            text        NOT NULL,
    name                 text,
    description          text,
    type                 text,                      -- 'CrewCheck', or NULL when self-registered
    settings             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    is_enabled           boolean     NOT NULL DEFAULT true,
    is_blocked           boolean     NOT NULL DEFAULT false,
    blocked_at           timestamptz,
    block_reason         text,
    application          text,
    application_version  text,
    os                   text,
    os_version           text,
    manufacturer         text,
    model                text,
    -- When the request that produced the current attributes was seen; orders concurrent
    -- flushes from several workers so an older sighting never overwrites a newer one.
    attributes_seen_at   timestamptz,
    first_seen_at        timestamptz,
    last_active_at       timestamptz,
    last_data_upload_at  timestamptz,
    -- The list's sort key: the later of last activity and block time (GREATEST skips NULLs).
    last_activity_at     timestamptz GENERATED ALWAYS AS (GREATEST(last_active_at, blocked_at)) STORED,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id)
);

CREATE TABLE device_history (
    id              bigserial   PRIMARY KEY,
    tenant_id       text        NOT NULL,
    device_id       text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    changed_fields  text[]      NOT NULL,
    previous        jsonb,
    current         jsonb       NOT NULL,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id) ON DELETE CASCADE
);
CREATE INDEX device_history_by_device ON device_history (tenant_id, device_id, recorded_at DESC, id DESC);

-- Device API keys and personal access tokens share one table so that the edge resolves any
-- presented secret with a single digest lookup.
CREATE TABLE api_keys (
    key_id        uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('device', 'pat')),
    device_id     text,
    name          text,
    digest        bytea       NOT NULL UNIQUE,
    prefix        text        NOT NULL,
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CHECK ((kind = 'device') = (device_id IS NOT NULL))
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, kind, created_at DESC);
CREATE INDEX api_keys_by_device ON api_keys (tenant_id, device_id) WHERE device_id IS NOT NULL;

CREATE TABLE audit_log (
    id           bigserial   PRIMARY KEY,
    tenant_id    text        NOT NULL,
    actor        text        NOT NULL,
    action       text        NOT NULL,
    target_type  text        NOT NULL,
    target_id    text        NOT NULL,
    reason       text,
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, at DESC, id DESC);
