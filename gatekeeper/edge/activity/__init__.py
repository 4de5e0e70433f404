"""Device activity: coalesced in memory per worker, flushed to Postgres in batches."""
