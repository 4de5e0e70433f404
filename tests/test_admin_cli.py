"""The admin CLI (`gatekeeper devices|tokens|audit`) against a real admin API on loopback, with
the session's real Postgres and Valkey: output, ``--json``, paging, errors and exit codes.

Most commands run ``gatekeeper.runtime.cli.main`` in a thread (the API serves on this test's
event loop, so the command cannot block it); the start-up failures run the real
``python -m gatekeeper`` in a subprocess, with an environment of their own.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import Stores
from test_admin_helpers import ALL_SCOPES, Api, admin_settings
from test_tls_listener import ThrowawayCA, ca

from admin_api.service import AdminService
from gatekeeper.domain.credentials import TOKEN_PREFIX
from gatekeeper.runtime import admin_client
from gatekeeper.runtime.admin_tokens import mint_token
from gatekeeper.runtime.cli import main

__all__ = ["ca"]  # the throwaway CA's fixture, used here too

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


async def test_list_as_a_table_and_as_json(api: Api) -> None:
    await api.create_device("gate-a", name="Gate A")
    await api.create_device("gate-b")
    await api.call("POST", api.device_path("gate-b", "/block"), json={"reason": "lost"})

    ran = await cli(api, "devices", "list")
    assert ran.code == 0 and ran.err == ""
    header, *rows = ran.out.splitlines()
    assert header.split() == [
        "DEVICE", "ID", "NAME", "APPLICATION", "MANUFACTURER", "MODEL", "STATUS", "LAST",
        "ACTIVITY",
    ]  # fmt: skip
    assert rows[0].split()[:3] == ["gate-b", "-", "-"] and "blocked" in rows[0]
    assert rows[1].split()[:3] == ["gate-a", "Gate", "A"] and "active" in rows[1]

    ran = await cli(api, "devices", "list", "--json")
    assert ran.code == 0 and json.loads(ran.out) == await _api_json(api, api.path("/devices"))

    only = await cli(api, "devices", "list", "--blocked", "only", "--json")
    assert [d["deviceId"] for d in json.loads(only.out)] == ["gate-b"]
    found = await cli(api, "devices", "list", "-q", "GATE a")
    assert [r.split()[0] for r in found.out.splitlines()[1:]] == ["gate-a"]
    none = await cli(api, "devices", "list", "-q", "nothing-like-it")
    assert none.code == 0 and none.out == "" and none.err == "no devices\n"


async def test_list_follows_pages_on_demand(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(5):
        await api.create_device(f"dev-{n}")
    everything = [d["deviceId"] for d in await _api_json(api, api.path("/devices"))]
    # Pages of two, so five devices take three requests, each following the API's Link.
    monkeypatch.setattr(admin_client, "PAGE_MAX", 2)

    ran = await cli(api, "devices", "list", "--all", "--json")
    assert [d["deviceId"] for d in json.loads(ran.out)] == everything and ran.err == ""

    ran = await cli(api, "devices", "list", "--limit", "3", "--json")
    assert [d["deviceId"] for d in json.loads(ran.out)] == everything[:3]
    assert ran.err.startswith("more devices: use --all or a bigger --limit")
    cursor = ran.err.rsplit("--cursor ", 1)[1].strip()

    rest = await cli(api, "devices", "list", "--cursor", cursor)
    assert [r.split()[0] for r in rest.out.splitlines()[1:]] == everything[3:]
    assert rest.err == ""


async def test_show_and_rename(api: Api) -> None:
    await api.create_device("kiosk-7", description="by the door")
    ran = await cli(api, "devices", "show", "kiosk-7")
    assert ran.code == 0
    card = dict(line.split(":", 1) for line in ran.out.splitlines())
    assert card["Device ID"].strip() == "kiosk-7" and card["Name"].strip() == "-"
    assert card["Description"].strip() == "by the door" and card["Blocked"].strip() == "no"

    ran = await cli(api, "devices", "rename", "kiosk-7", "Front kiosk")
    assert ran.code == 0 and ran.out == "renamed kiosk-7 to 'Front kiosk'\n"
    device = await _api_json(api, api.device_path("kiosk-7"))
    assert device["name"] == "Front kiosk"
    shown = await cli(api, "devices", "show", "kiosk-7", "--json")
    assert json.loads(shown.out) == device

    cleared = await cli(api, "devices", "rename", "kiosk-7", "--clear", "--json")
    assert cleared.code == 0 and json.loads(cleared.out)["name"] is None


async def test_block_with_a_reason_then_unblock_and_audit(api: Api) -> None:
    await api.create_device("tab-1")
    ran = await cli(api, "devices", "block", "tab-1", "--reason", "reported stolen")
    assert ran.code == 0 and ran.out == "blocked tab-1 (reason: reported stolen)\n"
    device = await _api_json(api, api.device_path("tab-1"))
    assert device["isBlocked"] and device["blockReason"] == "reported stolen"

    ran = await cli(api, "devices", "unblock", "tab-1", "--json")
    assert ran.code == 0 and json.loads(ran.out)["isBlocked"] is False

    audit = await cli(api, "audit")
    assert audit.code == 0
    header, *rows = _table(audit.out)
    assert header == ["AT", "ACTOR", "ACTION", "TARGET", "REASON"]
    actions = [(r[2], r[3], r[4]) for r in rows]
    assert actions[:3] == [
        ("device.unblock", "device/tab-1", "-"),
        ("device.block", "device/tab-1", "reported stolen"),
        ("device.create", "device/tab-1", "-"),
    ]
    entries = json.loads((await cli(api, "audit", "--json", "--limit", "2")).out)
    assert entries == (await _api_json(api, api.path("/audit")))[:2]
    blocks = await cli(api, "audit", "--action", "device.block", "--target", "tab-1", "--json")
    assert [(e["action"], e["reason"]) for e in json.loads(blocks.out)] == [
        ("device.block", "reported stolen")
    ]
    future = await cli(api, "audit", "--since", "2999-01-01T00:00:00Z")
    assert future.code == 0 and future.out == "" and future.err == "no audit entries\n"
    bad = await cli(api, "audit", "--since", "yesterday")
    assert bad.code == 1 and bad.err.startswith("gatekeeper: Bad request (400)")


async def test_history(api: Api, pg_pool: asyncpg.Pool) -> None:
    await api.create_device("hist")
    first = {
        "application": "crew",
        "applicationVersion": "1.0",
        "os": "android",
        "osVersion": "13",
        "manufacturer": "acme",
        "model": "x1",
    }
    second = {**first, "applicationVersion": "1.1"}
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    await pg_pool.executemany(
        "INSERT INTO device_history (tenant_id, device_id, recorded_at, changed_fields,"
        " previous, current) VALUES ($1, 'hist', $2, $3, $4::jsonb, $5::jsonb)",
        [
            (api.tenant, t0, list(first), None, json.dumps(first)),
            (
                api.tenant,
                t0 + timedelta(hours=1),
                ["applicationVersion"],
                json.dumps(first),
                json.dumps(second),
            ),
        ],
    )
    ran = await cli(api, "devices", "history", "hist")
    assert ran.code == 0
    assert _table(ran.out) == [
        ["RECORDED AT", "CHANGE"],
        ["2024-05-01 01:00:00Z", "applicationVersion: 1.0 -> 1.1"],
        [
            "2024-05-01 00:00:00Z",
            "first seen: application=crew, applicationVersion=1.0, os=android, osVersion=13,"
            " manufacturer=acme, model=x1",
        ],
    ]
    as_json = await cli(api, "devices", "history", "hist", "--json")
    assert json.loads(as_json.out) == await _api_json(api, api.device_path("hist", "/history"))


async def test_cells_cannot_drive_the_terminal(api: Api) -> None:
    """A name (or a device's own header values) holding escape sequences prints inert."""
    await api.create_device("esc", name="evil\x1b]0;owned\x07\x1b[2J")
    ran = await cli(api, "devices", "list")
    assert "\x1b" not in ran.out and "\x07" not in ran.out
    assert "evil?]0;owned??[2J" in ran.out
    shown = await cli(api, "devices", "show", "esc")
    assert "\x1b" not in shown.out and "evil?]0;owned??[2J" in shown.out


# --- tokens ----------------------------------------------------------------------------------


async def test_tokens_create_list_revoke(api: Api) -> None:
    created = await cli(api, "tokens", "create", "ci deploys")
    assert created.code == 0
    secret = created.out.strip()
    assert created.out == secret + "\n" and secret.startswith(TOKEN_PREFIX)
    assert "shown only this once" in created.err and secret not in created.err
    token_id = created.err.split()[2]
    uuid.UUID(token_id)

    listed = await cli(api, "tokens", "list")
    assert listed.code == 0 and secret not in listed.out
    header, row = _table(listed.out)
    assert header[:3] == ["TOKEN ID", "NAME", "PREFIX"] and row[:2] == [token_id, "ci deploys"]
    as_json = json.loads((await cli(api, "tokens", "list", "--json")).out)
    assert as_json == await _api_json(api, api.path("/tokens"))
    assert all("token" not in t for t in as_json)

    revoked = await cli(api, "tokens", "revoke", token_id)
    assert revoked.code == 0 and revoked.out == f"revoked {token_id}\n"
    (after,) = await _api_json(api, api.path("/tokens"))
    assert after["revokedAt"] is not None

    with_expiry = await cli(
        api, "tokens", "create", "short", "--expires-at", "2099-01-01T00:00:00Z", "--json"
    )
    body = json.loads(with_expiry.out)
    assert body["expiresAt"].startswith("2099-01-01") and body["token"].startswith(TOKEN_PREFIX)


# --- errors ----------------------------------------------------------------------------------


async def test_unknown_device_is_exit_1_with_the_problem(api: Api) -> None:
    ran = await cli(api, "devices", "show", "ghost")
    assert ran.code == 1 and ran.out == ""
    assert ran.err == "gatekeeper: Not found (404): No such device\n"
    gone = await cli(api, "tokens", "revoke", str(uuid.uuid4()))
    assert gone.code == 1 and gone.err == "gatekeeper: Not found (404): No such token\n"


async def test_invalid_values_name_the_field_on_a_second_line(api: Api) -> None:
    await api.create_device("d1")
    ran = await cli(api, "devices", "block", "d1", "--reason", "x" * 501)
    assert ran.code == 1
    first, second = ran.err.splitlines()
    assert first == "gatekeeper: Validation failed (422): Invalid values: reason"
    assert second.startswith("  reason: ")


async def test_a_refused_token_is_exit_1_and_never_printed(api: Api) -> None:
    other = api.token(tenant="someone-else")
    ran = await cli(api, "devices", "list", token=other)
    assert ran.code == 1 and ran.err.startswith("gatekeeper: Forbidden (403)")
    assert other not in ran.err and len(ran.err.splitlines()) == 1
    bad = await cli(api, "devices", "list", token="not-a-jwt")
    assert bad.code == 1 and bad.err.startswith("gatekeeper: Unauthorized (401)")
    assert "not-a-jwt" not in bad.err


async def test_connection_refused_is_one_line_naming_the_url(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    ran = await subprocess_gk(
        "devices", "list", "--url", url, "--tenant", "acme", env={"GATEKEEPER_ADMIN_TOKEN": "t"}
    )
    assert ran.code == 1 and ran.out == ""
    assert ran.err == f"gatekeeper: cannot reach the admin API at {url}: connection refused\n"


async def test_a_missing_token_is_exit_2(tmp_path: Path) -> None:
    ran = await subprocess_gk(
        "devices", "list", "--tenant", "acme", env={"XDG_CONFIG_HOME": str(tmp_path)}
    )
    assert ran.code == 2 and ran.out == "" and len(ran.err.splitlines()) == 1
    assert ran.err.startswith(
        "gatekeeper: no admin token: give --token, set GATEKEEPER_ADMIN_TOKEN"
    )
    assert str(tmp_path / "gatekeeper" / "admin.toml") in ran.err
    no_tenant = await subprocess_gk(
        "audit", env={"XDG_CONFIG_HOME": str(tmp_path), "GATEKEEPER_ADMIN_TOKEN": "t"}
    )
    assert no_tenant.code == 2 and "no admin tenant" in no_tenant.err
    bad_url = await subprocess_gk(
        "audit", "--url", "localhost:8081", "--tenant", "a", env={"GATEKEEPER_ADMIN_TOKEN": "t"}
    )
    assert bad_url.code == 2 and "is not an http:// or https:// URL" in bad_url.err


async def test_a_reader_that_leaves_early_is_no_error(api: Api) -> None:
    """`gatekeeper devices list | head -1`: the closed pipe is neither a traceback nor a
    failure."""
    for n in range(3):
        await api.create_device(f"pipe-{n}")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    base = {k: v for k, v in os.environ.items() if k not in ADMIN_ENV}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gatekeeper",
        "devices",
        "list",
        *_flags(api),
        env=base,
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    _, err = await proc.communicate()
    assert (proc.returncode, err.decode()) == (0, "")


async def test_https_with_a_ca_file(
    ca: ThrowawayCA, stores: Stores, tmp_path: Path, tenant: str
) -> None:
    cert, key = ca.issue(tmp_path, serial=3001)
    settings = admin_settings(
        stores.pg_url, stores.redis_url, tls_cert_file=str(cert), tls_key_file=str(key)
    )
    service = AdminService(settings)
    await service.start()
    try:
        url = f"https://127.0.0.1:{service.port}"
        flags = [
            "--url",
            url,
            "--tenant",
            tenant,
            "--token",
            mint_token(settings, tenant, ALL_SCOPES),
        ]
        trusted = await gk("audit", *flags, "--ca-file", str(ca.pem))
        assert (trusted.code, trusted.out, trusted.err) == (0, "", "no audit entries\n")
        untrusted = await gk("audit", *flags)
        assert untrusted.code == 1 and len(untrusted.err.splitlines()) == 1
        assert untrusted.err.startswith(
            f"gatekeeper: cannot reach the admin API at {url}: certificate not trusted ("
        )
        assert untrusted.err.endswith("; give the CA with --ca-file\n")
        missing = await gk("audit", *flags, "--ca-file", str(tmp_path / "none.pem"))
        assert missing.code == 2 and "CA file" in missing.err
    finally:
        await service.stop()


# --- where the settings come from ---------------------------------------------------------------


async def test_config_file_then_environment_then_flags(
    api: Api, _clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.create_device("cfg-1")
    config = _clean_env / "gatekeeper" / "admin.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f'url = "{_base_url(api)}"\ntenant = "{api.tenant}"\ntoken = "{api.token()}"\n'
    )
    config.chmod(0o600)
    ran = await gk("devices", "list", "--json")
    assert ran.code == 0 and ran.err == ""
    assert [d["deviceId"] for d in json.loads(ran.out)] == ["cfg-1"]

    # The environment beats the file: a token of another tenant is refused...
    monkeypatch.setenv("GATEKEEPER_ADMIN_TOKEN", api.token(tenant="someone-else"))
    assert (await gk("devices", "list")).code == 1
    # ...and a flag beats the environment.
    assert (await gk("devices", "list", "--token", api.token())).code == 0
    monkeypatch.delenv("GATEKEEPER_ADMIN_TOKEN")

    config.chmod(0o644)
    warned = await gk("devices", "list")
    assert warned.code == 0 and f"chmod 600 {config}" in warned.err

    config.write_text('url = "http://x"\npassword = "p"\n')
    refused = await gk("devices", "list")
    assert refused.code == 2 and "unknown keys password" in refused.err


async def test_an_explicit_config_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    ran = await gk("audit", "--admin-config", str(missing))
    assert ran.code == 2 and ran.err == f"gatekeeper: admin config file {missing} does not exist\n"


def test_every_flag_says_its_default_and_variable() -> None:
    for command in (
        ["devices", "list"],
        ["devices", "block"],
        ["devices", "rename"],
        ["devices", "history"],
        ["tokens", "create"],
        ["audit"],
    ):
        ran = _main_help([*command, "--help"])
        text = " ".join(ran.split())
        for variable in ADMIN_ENV:
            assert variable in text, (command, variable)
        assert "exit status: 0 done; 1 the admin API answered with an error" in text
        options = [line for line in ran.splitlines() if line.strip().startswith("--")]
        assert options, command
        assert text.count("default") >= len(options), command


def _main_help(argv: list[str]) -> str:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return out.getvalue()


def test_bash_completion_knows_the_commands_and_flags(tmp_path: Path) -> None:
    script = tmp_path / "gatekeeper.bash"
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["completion", "bash"]) == 0
    script.write_text(out.getvalue())
    probe = (
        f"source {script}\n"
        'complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _shtab_gatekeeper;'
        ' echo "${COMPREPLY[*]}"; }\n'
        "complete_words gatekeeper devices bl\n"
        "complete_words gatekeeper tokens c\n"
        "complete_words gatekeeper devices list --te\n"
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["block", "create", "--tenant"]
