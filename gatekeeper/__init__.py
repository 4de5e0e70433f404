"""Gatekeeper: an edge reverse proxy that blocks devices and records their activity."""

__version__ = "0.1.0"
# The name the package index knows it by (pyproject.toml): what `pip install` takes.
DISTRIBUTION = "gatekeeper-edge"
