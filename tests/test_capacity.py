"""The capacity model (``python -m benchmarks capacity``, docs/scaling.md): its arithmetic
checked by properties on a synthetic latest.json, the page current with the committed figures,
and the figures it reads off the code checked against a real PostgreSQL and Valkey."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from conftest import Stores

from benchmarks.__main__ import main
from benchmarks.capacity import BEGIN, END, Assumptions, Model, load_inputs, model
from benchmarks.capacity_code import (
    PIECE_DEVICES,
    PIECE_ROUND_TRIPS,
    ROWS_PER_TOUCH,
    measure_entry_bytes,
    redis_commands_per_change,
)
from gatekeeper.edge.activity import sql
from gatekeeper.edge.activity.pending import PendingDevice
from gatekeeper.store.edge_writes import set_blocked
from gatekeeper.types import DeviceKey

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ASSUMED = Assumptions()


def _scenario(name: str, rps: float, cpu_us: float) -> dict[str, Any]:
    return {
        "name": name,
        "status": "ok",
        "rps": rps,
        "cpu_us_per_request": cpu_us,
        "recorder_cpu_us_per_request": 0.0,
        "instructions_per_request": 100_000.0,
    }


def _synthetic(folder: Path, rps: float = 10_000.0, touches: float = 50_000.0) -> Path:
    """A latest.json whose two CPU estimates agree: 1e6 / rps µs per request."""
    folder.mkdir(parents=True, exist_ok=True)
    latest = {
        "scenarios": [
            _scenario("gatekeeper-1", rps, 1e6 / rps),
            _scenario("gatekeeper-2", rps * 1.5, 1e6 / (rps * 1.5)),
        ],
        "propagation_ms": {"block_p99": 2.0},
        "writebehind": {"devices_per_s": touches / 2, "rows_per_1000_requests": 4.0},
        "details": {"writebehind": {"touches_per_s": touches}},
    }
    (folder / "latest.json").write_text(json.dumps(latest), encoding="utf-8")
    return folder


def _run(folder: Path, assumptions: Assumptions = ASSUMED) -> Model:
    return model(load_inputs(folder), assumptions)


def test_cores_scale_with_the_target_and_inversely_with_per_core_speed(tmp_path: Path) -> None:
    base = _run(_synthetic(tmp_path / "a"))
    doubled = _run(_synthetic(tmp_path / "a"), replace(ASSUMED, target_rps=2 * ASSUMED.target_rps))
    slower = _run(_synthetic(tmp_path / "b", rps=5_000.0))
    busy = base.value("busy cores (larger of two estimates)")
    assert busy == pytest.approx(ASSUMED.target_rps / 10_000.0)  # the slower of the two runs
    assert doubled.value("busy cores (larger of two estimates)") == pytest.approx(2 * busy)
    assert slower.value("busy cores (larger of two estimates)") == pytest.approx(2 * busy)
    # Headroom: cores are provisioned above the busy ones, by the utilisation, rounded up.
    assert base.value("proxy cores") >= busy / ASSUMED.utilisation
    assert base.value("proxy cores") < busy / ASSUMED.utilisation + 1


def test_postgres_writes_follow_the_precision_and_the_device_count(tmp_path: Path) -> None:
    folder = _synthetic(tmp_path)
    quiet = replace(ASSUMED, changes_per_min=0.0, new_per_day=0.0)
    base = _run(folder, quiet)
    # With no changes and no new devices, every active device is one touch row per window.
    assert base.value("Postgres rows/s") == pytest.approx(ASSUMED.devices / ASSUMED.precision_s)
    coarser = _run(folder, replace(quiet, precision_s=2 * ASSUMED.precision_s))
    more = _run(folder, replace(quiet, devices=2 * ASSUMED.devices))
    assert coarser.value("Postgres rows/s") == pytest.approx(base.value("Postgres rows/s") / 2)
    assert more.value("Postgres rows/s") == pytest.approx(2 * base.value("Postgres rows/s"))
    assert base.value("Postgres transactions/s") == pytest.approx(
        base.value("Postgres rows/s") / PIECE_DEVICES
    )
    # Changes cost rows on top of the touches.
    assert _run(folder).value("Postgres rows/s") > base.value("Postgres rows/s")


def test_recorders_and_redis_follow_their_inputs(tmp_path: Path) -> None:
    fast = _run(_synthetic(tmp_path / "fast", touches=500_000.0))
    slow = _run(_synthetic(tmp_path / "slow", touches=50_000.0))
    assert slow.value("recorders needed") > fast.value("recorders needed") >= 1
    base = _run(_synthetic(tmp_path / "fast"))
    bigger = _run(_synthetic(tmp_path / "fast"), replace(ASSUMED, devices=10 * ASSUMED.devices))
    assert bigger.value("Redis memory, edge view") == pytest.approx(
        10 * base.value("Redis memory, edge view")
    )
    assert bigger.value("Redis shards") >= base.value("Redis shards") >= 1
    # Ten times the devices on as many workers: more than a worker remembers, and it says so.
    assert bigger.value("devices known per worker") > 200_000
    assert any(o.name.startswith("WARNING") for o in bigger.outputs)
    assert not any(o.name.startswith("WARNING") for o in base.outputs)


def test_every_input_says_where_it_comes_from(tmp_path: Path) -> None:
    result = _run(_synthetic(tmp_path))
    for item in result.inputs:
        assert item.source.startswith(("latest.json", "capacity-redis.json", "derived", "assum"))
    assert result.value("Redis commands per block") >= 3  # MULTI, the set change, EXEC


def test_a_run_writes_the_table_between_the_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "scaling.md"
    shutil.copy(ROOT / "docs" / "scaling.md", doc)
    text = doc.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    doc.write_text(f"{head}{BEGIN}\nstale\n{END}{rest.partition(END)[2]}", encoding="utf-8")
    folder = _synthetic(tmp_path / "results")
    assert main(["capacity", "--results", str(folder), "--doc", str(doc), "--check"]) == 1
    assert main(["capacity", "--results", str(folder), "--doc", str(doc)]) == 0
    written = doc.read_text(encoding="utf-8")
    table = written.partition(BEGIN)[2].partition(END)[0]
    assert "| out | proxy cores | 167 |" in table  # 1M / 10,000 req/s at 60 %: ⌈166.7⌉
    assert "stale" not in written and written.startswith(head)
    assert table in capsys.readouterr().out
    assert main(["capacity", "--results", str(folder), "--doc", str(doc), "--check"]) == 0


def test_docs_scaling_is_the_rendering_of_the_committed_figures() -> None:
    assert main(["capacity", "--check"]) == 0, "run: python -m benchmarks capacity"


async def test_bytes_per_entry_on_a_real_valkey_match_the_committed_figure(
    redis_client: aioredis.Redis,
) -> None:
    committed = json.loads((RESULTS / "capacity-redis.json").read_text(encoding="utf-8"))
    measured = await measure_entry_bytes(redis_client, sample=committed["sample_entries"])
    for name in ("key_hash_bytes_per_entry", "device_set_bytes_per_member"):
        assert measured[name] == pytest.approx(committed[name], rel=0.1), name
    assert not await redis_client.keys("capacity:*")  # the scratch keys are gone


async def _commands(redis: aioredis.Redis) -> int:
    """Commands the server has run, INFO itself left out."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def test_a_block_and_an_unblock_cost_the_commands_the_model_counts(
    pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, tenant: str
) -> None:
    """The count read off an unsent pipeline is what a real Valkey runs for the admin's call."""
    counted = redis_commands_per_change()
    await pg_pool.execute(
        "INSERT INTO devices (tenant_id, device_id) VALUES ($1, 'counted')", tenant
    )
    for blocked, name in ((True, "block"), (False, "unblock")):
        before = await _commands(redis_client)
        assert await set_blocked(pg_pool, redis_client, tenant, "counted", blocked)
        assert await _commands(redis_client) - before == counted[name], name


async def test_a_touch_piece_costs_the_round_trips_and_rows_the_model_counts(
    stores: Stores, tenant: str
) -> None:
    queries: list[str] = []

    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda logged: queries.append(logged.query))

    pool = await asyncpg.create_pool(stores.pg_url, min_size=1, max_size=1, init=log_queries)
    try:
        keys: list[DeviceKey] = [(tenant, f"d{i:04d}") for i in range(PIECE_DEVICES)]
        attrs = ("app", "1.0", "android", "14", "acme", "x1")
        now = time.time()
        first = {k: PendingDevice(attrs, now, False, True) for k in keys}
        await sql.write_batch(pool, first, {}, None, timeout=30)
        before = await _activity_updates(pool)
        queries.clear()
        touch = {k: PendingDevice(attrs, now + 60, False, False) for k in keys}
        await sql.write_batch(pool, touch, {}, set(keys), timeout=30)
        assert len(queries) == PIECE_ROUND_TRIPS, queries
        queries.clear()
        updated = await _wait_for_stats(pool, before + ROWS_PER_TOUCH * PIECE_DEVICES)
        assert updated - before == ROWS_PER_TOUCH * PIECE_DEVICES
    finally:
        await pool.close()


async def _activity_updates(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'device_activity'"
        )
    return int(value)


async def _wait_for_stats(pool: asyncpg.Pool, wanted: int) -> int:
    """Postgres publishes a backend's table statistics at most once a second; poll for them."""
    deadline = time.monotonic() + 10
    while True:
        value = await _activity_updates(pool)
        if value >= wanted or time.monotonic() > deadline:
            return value
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_stat_force_next_flush()")
