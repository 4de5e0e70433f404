"""The admin HTTP API of the gatekeeper."""
