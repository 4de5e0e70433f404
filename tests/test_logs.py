"""``log_format = "json"``: every log line of every command and process is one JSON object."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from conftest import Stores

pytestmark = pytest.mark.timeout(60)


def _env(stores: Stores, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    env.update(GATEKEEPER_DATABASE_URL=stores.pg_url, GATEKEEPER_REDIS_URL=stores.redis_url)
    env.update(extra)
    return env


def _objects(lines: list[str]) -> list[dict[str, object]]:
    objects = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    for obj in objects:
        assert {"time", "level", "logger", "message", "process", "pid"} <= obj.keys(), obj
        assert str(obj["time"]).endswith("Z")
    return objects


async def test_migrate_logs_json(stores: Stores, pg_pool: asyncpg.Pool) -> None:
    database = f"logs_{uuid.uuid4().hex[:8]}"
    await pg_pool.execute(f"CREATE DATABASE {database}")
    url = stores.pg_url.rsplit("/", 1)[0] + "/" + database
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper", "migrate", "--database-url", url],
        env=_env(stores, GATEKEEPER_LOG_FORMAT="json"),
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    objects = _objects(lines)
    assert {obj["process"] for obj in objects} == {"gatekeeper"}
    assert any(str(obj["message"]).startswith("applied migration 0001") for obj in objects)


async def test_the_supervisor_workers_and_recorder_all_log_json(
    stores: Stores, echo_upstream: str, tmp_path: Path
) -> None:
    log = tmp_path / "stderr"
    with log.open("wb") as sink:
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gatekeeper",
                "proxy",
                "--workers",
                "2",
                "--upstream",
                echo_upstream,
                "--proxy-port",
                "0",
                "--metrics-port",
                "0",
            ],
            env=_env(stores, GATEKEEPER_LOG_FORMAT="json"),
            stderr=sink,
        )
        try:

            def roles() -> set[object]:
                text = log.read_text()
                return {json.loads(line)["process"] for line in text.splitlines() if line}

            for _ in range(300):
                if {"gatekeeper", "worker", "recorder"} <= roles():
                    break
                await asyncio.sleep(0.05)
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(30)
        finally:
            if proxy.poll() is None:
                proxy.kill()
                proxy.wait()
    objects = _objects(log.read_text().splitlines())
    assert {"gatekeeper", "worker", "recorder"} <= {obj["process"] for obj in objects}
    assert any(str(obj["message"]).startswith("supervisor: 2 workers") for obj in objects)
