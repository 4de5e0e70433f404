"""Typed application keys for the resources every admin handler shares.

Keys for objects defined in a module of their own (the token verifier, the metrics, the edge
sync) live next to those objects, so this module imports nothing from ``admin_api``.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from gatekeeper.settings import Settings
from gatekeeper.store.clients import RedisClient
from gatekeeper.types import Clock

__all__ = ["CLOCK", "PG_POOL", "REDIS", "SETTINGS"]

SETTINGS = web.AppKey("settings", Settings)
PG_POOL = web.AppKey("pg_pool", asyncpg.Pool)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
# Where "now" comes from for time-based decisions (the stale-device report and job); tests
# pass a gatekeeper.types.ManualClock to create_app.
CLOCK = web.AppKey[Clock]("clock")
