"""A store a command cannot reach at start: one line naming the setting, where it points (never
the password) and why, and exit code 1; and each command asks only for the settings it uses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import Stores

pytestmark = pytest.mark.timeout(60)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _gatekeeper(*args: str) -> tuple[int, list[str]]:
    return _gatekeeper_env({}, *args)


def _gatekeeper_env(extra: dict[str, str], *args: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")} | extra
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper", *args],
        capture_output=True,
        text=True,
        timeout=45,
        env=env,
        check=False,
    )
    return done.returncode, done.stderr.splitlines()


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("postgresql://app:s3cret@127.0.0.1:{closed}/gk", "connection refused"),
        ("postgresql://app:s3cret@nohost.invalid:5432/gk", "host not found"),
        ("postgresql://postgres:s3cret@127.0.0.1:{pg}/nope", 'database "nope" does not exist'),
        ("postgresql://nobody:s3cret@127.0.0.1:{pg}/postgres", 'role "nobody" does not exist'),
        ("mysql://app:s3cret@127.0.0.1:{pg}/gk", "invalid DSN"),
    ],
    ids=["refused", "unknown-host", "unknown-database", "unknown-role", "wrong-scheme"],
)
def test_migrate_names_the_setting_and_the_cause_in_one_line(
    stores: Stores, url: str, cause: str
) -> None:
    url = url.format(closed=_closed_port(), pg=stores.postgres.port)
    code, lines = _gatekeeper("migrate", "--database-url", url)
    assert code == 1, lines
    assert len(lines) == 1, lines
    masked = url.replace(":s3cret@", ":***@")
    assert lines[0].startswith(f"gatekeeper: database_url {masked}: "), lines
    assert cause in lines[0]
    assert "s3cret" not in lines[0]


def test_migrate_needs_no_redis_url(stores: Stores) -> None:
    code, lines = _gatekeeper("migrate", "--database-url", stores.pg_url)
    assert code == 0, lines


def test_a_command_without_its_store_settings_says_which(stores: Stores) -> None:
    code, lines = _gatekeeper("reconcile", "--database-url", stores.pg_url)
    assert code == 2
    assert lines == [
        "gatekeeper: set GATEKEEPER_REDIS_URL (or the flags);"
        " only `gatekeeper up` starts embedded stores"
    ]


def test_admin_with_postgres_refused_is_one_line() -> None:
    port = _closed_port()
    code, lines = _gatekeeper(
        "admin",
        "--database-url",
        f"postgresql://app:s3cret@127.0.0.1:{port}/gk",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--admin-port",
        "0",
    )
    assert code == 1, lines
    assert lines == [
        f"gatekeeper: database_url postgresql://app:***@127.0.0.1:{port}/gk: connection refused"
    ]


def test_reconcile_with_redis_refused_is_one_line(stores: Stores) -> None:
    port = _closed_port()
    code, lines = _gatekeeper(
        "reconcile", "--database-url", stores.pg_url, "--redis-url", f"redis://127.0.0.1:{port}/0"
    )
    assert code == 1, lines
    assert lines == [f"gatekeeper: redis_url redis://127.0.0.1:{port}/0: connection refused"]


def test_admin_with_a_placeholder_secret_refuses_before_any_connection() -> None:
    code, lines = _gatekeeper_env(
        {"GATEKEEPER_JWT_SECRET": "CHANGE-ME"},
        "admin",
        "--database-url",
        "postgresql://app@127.0.0.1:1/gk",
        "--redis-url",
        "redis://127.0.0.1:1/0",
    )
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("gatekeeper: jwt_secret is a placeholder"), lines
