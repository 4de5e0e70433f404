"""The admin CLI's failures, configuration, help and completion: exit codes, one-line errors,
where the URL, tenant and token come from."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from admincli_rig import (
    ADMIN_ENV,
    _base_url,
    _clean_env,
    _flags,
    cli,
    gk,
    subprocess_gk,
)
from conftest import Stores
from test_admin_helpers import ALL_SCOPES, Api, admin_settings
from test_tls_listener import ThrowawayCA, ca

from admin_api.service import AdminService
from gatekeeper.runtime.admin_tokens import mint_token
from gatekeeper.runtime.cli import main

__all__ = ["_clean_env", "ca"]  # fixtures: the private environment, the throwaway CA


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
        ["webhooks", "list"],
        ["webhooks", "create"],
        ["webhooks", "deliveries"],
        ["webhooks", "reset-secret"],
        ["devices", "clear-conflict"],
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
        "complete_words gatekeeper webhooks res\n"
        "complete_words gatekeeper webhooks create --ev\n"
        "complete_words gatekeeper devices cl\n"
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        "block",
        "create",
        "--tenant",
        "reset-secret",
        "--event",
        "clear-conflict",
    ]
