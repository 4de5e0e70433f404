"""The proxy: its HTTP server, the upstream pool, the per-request handler, the blocklist mirror,
the key cache, the activity recorder and the edge's metrics."""
