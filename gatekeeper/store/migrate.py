"""Schema migrations: numbered SQL files applied once each, in order, under an advisory lock.

Call :func:`migrate` before serving; several processes may call it at once (the lock makes the
second wait and then find nothing to do).
"""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

from gatekeeper.store.clients import CONNECT_ERRORS, StoreUnavailable

__all__ = ["migrate"]

_log = logging.getLogger(__name__)

# An arbitrary constant that names "the gatekeeper schema" among advisory locks.
_LOCK_ID = 0x6A7E_4B3D


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("gatekeeper.store") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


async def _ensure_table(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )


async def migrate(dsn: str) -> list[str]:
    """Apply every pending migration; return the versions applied."""
    try:
        conn = await asyncpg.connect(dsn, timeout=10.0)
    except CONNECT_ERRORS as exc:
        raise StoreUnavailable("database_url", dsn, exc) from exc
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await _ensure_table(conn)
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in _migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version
                    )
                _log.info("applied migration %s", version)
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()
    return applied
