-- Webhooks (issue 14): a tenant's subscriptions, one delivery per (webhook, outbox event), and
-- every attempt of each.
--
-- The signing secret is stored as given (it must be kept to sign; a hash would not do). It is
-- shown once, at creation, and never logged or returned again.
CREATE TABLE webhooks (
    webhook_id    uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    url           text        NOT NULL,
    events        text[]      NOT NULL,
    description   text,
    secret        text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    is_enabled    boolean     NOT NULL DEFAULT true,
    disabled_at   timestamptz,
    -- The first failure of the current run of failures (NULL after a success): a day of them
    -- disables the webhook.
    failing_since timestamptz
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, created_at);

-- Which outbox events the dispatcher has turned into deliveries (fan-out).
ALTER TABLE event_outbox ADD COLUMN fanned_out boolean NOT NULL DEFAULT false;
CREATE INDEX event_outbox_pending ON event_outbox (id) WHERE NOT fanned_out;

CREATE TABLE webhook_deliveries (
    id              bigserial   PRIMARY KEY,
    webhook_id      uuid        NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    tenant_id       text        NOT NULL,
    outbox_id       bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    device_id       text,
    -- The envelope as sent (id, type, createdAt, tenantId, data): the outbox row may be pruned.
    body            text        NOT NULL,
    -- pending, delivered, or failed (gave up after the retry window)
    state           text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    -- When it may be tried next; a claim moves it forward by a lease, so a dispatcher killed
    -- mid-delivery leaves it to be retried (at least once).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (webhook_id, outbox_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (webhook_id, device_id, outbox_id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at)
    WHERE state <> 'pending';

CREATE TABLE webhook_attempts (
    id           bigserial   PRIMARY KEY,
    delivery_id  bigint      NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    webhook_id   uuid        NOT NULL,
    tenant_id    text        NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    status       integer,
    duration_ms  double precision NOT NULL,
    error        text
);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts (tenant_id, webhook_id, id);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);
