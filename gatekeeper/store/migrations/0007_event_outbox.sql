-- Events out (issue 14): every event is written to this outbox in the same transaction as the
-- change that caused it, so a committed change always has its event and a rolled-back one never
-- does. The admin process's dispatcher turns outbox rows into webhook deliveries.
--
-- `id` orders events: per device, a later change has a larger id (delivery keeps that order per
-- device). `event_id` is the public id a receiver sees (and de-duplicates on).
CREATE TABLE event_outbox (
    id          bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    tenant_id   text        NOT NULL,
    -- The device the event is about (NULL for token events): the unit of in-order delivery.
    device_id   text,
    type        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    data        jsonb       NOT NULL
);
CREATE INDEX event_outbox_tenant ON event_outbox (tenant_id, id);
