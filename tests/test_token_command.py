"""`gatekeeper token` signs with the secret of a running `gatekeeper up` stack, found from any
directory, and refuses (exit 2, one clear line) when there is none instead of creating one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from gatekeeper.runtime.admin_tokens import load_or_create_local_secret, remember_data_dir

pytestmark = pytest.mark.timeout(60)


def _token(cwd: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env["XDG_STATE_HOME"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", "token", "--tenant", "acme", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_without_a_stack_it_refuses_and_creates_nothing(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _token(elsewhere, tmp_path / "state")
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("gatekeeper: no signing secret of a `gatekeeper up` stack in ")
    assert "GATEKEEPER_JWT_SECRET" in line
    assert list(elsewhere.iterdir()) == []


def test_it_finds_the_last_up_stack_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    data = tmp_path / "stack" / "data"
    secret = load_or_create_local_secret(data)  # as `gatekeeper up` does
    remember_data_dir(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _token(elsewhere, state, "--scope", "Device.Read")
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(
        done.stdout.strip(),
        secret,
        algorithms=["HS256"],
        audience="gatekeeper-admin",
        issuer="gatekeeper",
    )
    assert claims["tid"] == "acme" and claims["scope"] == "Device.Read"
    # An explicit --data-dir is the only place looked at.
    other = tmp_path / "other"
    done = _token(elsewhere, state, "--data-dir", str(other))
    assert done.returncode == 2
    assert str(other / "jwt-secret") in done.stderr
