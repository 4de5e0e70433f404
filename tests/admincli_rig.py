"""Shared pieces of the admin CLI tests (no tests here): running the command against a real
admin API, in a thread or a subprocess, and reading its tables."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_admin_helpers import Api

from gatekeeper.runtime.cli import main

ADMIN_ENV = (
    "GATEKEEPER_ADMIN_URL",
    "GATEKEEPER_ADMIN_TENANT",
    "GATEKEEPER_ADMIN_TOKEN",
    "GATEKEEPER_ADMIN_CONFIG",
)


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No admin variables, and a config home of the test's own (never the real ~/.config)."""
    for name in ADMIN_ENV:
        monkeypatch.delenv(name, raising=False)
    config_home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    yield config_home


def _base_url(api: Api) -> str:
    return str(api.client.make_url("")).rstrip("/")


def _flags(api: Api, token: str | None = None) -> list[str]:
    return ["--url", _base_url(api), "--tenant", api.tenant, "--token", token or api.token()]


def _main(argv: list[str]) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return Ran(code, out.getvalue(), err.getvalue())


async def gk(*argv: str) -> Ran:
    """``gatekeeper ARGV`` in a thread, so the API on this loop keeps serving."""
    return await asyncio.to_thread(_main, list(argv))


async def cli(api: Api, *argv: str, token: str | None = None) -> Ran:
    """``gatekeeper ARGV`` aimed at ``api`` by flags."""
    return await gk(*argv, *_flags(api, token))


async def subprocess_gk(*argv: str, env: dict[str, str]) -> Ran:
    base = {k: v for k, v in os.environ.items() if k not in ADMIN_ENV}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gatekeeper",
        *argv,
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def _api_json(api: Api, path: str) -> Any:
    response = await api.call("GET", path)
    assert response.status == 200, await response.text()
    return await response.json()


def _table(text: str) -> list[list[str]]:
    """Rows of a printed table, split on runs of two or more spaces."""
    return [re.split(r" {2,}", line.strip()) for line in text.splitlines()]


# --- devices -------------------------------------------------------------------------------------
