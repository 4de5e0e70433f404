"""Gatekeeper: an edge reverse proxy that blocks devices and records their activity."""

__version__ = "0.1.0"
