-- Resetting a webhook's signing secret (docs/webhooks.md "Rotating the secret"): the secret it
-- replaced keeps signing beside the new one until `previous_secret_until`, so a receiver can
-- switch without refusing a delivery. Both NULL when there is no overlap.
ALTER TABLE webhooks
    ADD COLUMN previous_secret text,
    ADD COLUMN previous_secret_until timestamptz,
    ADD CONSTRAINT webhooks_previous_secret_whole
        CHECK ((previous_secret IS NULL) = (previous_secret_until IS NULL));
