"""``python -m benchmarks capacity``: the capacity model of docs/scaling.md.

Inputs come from three places, and every one is printed with where it came from:

* measured: ``benchmarks/results/latest.json`` (the proxy harness) and ``capacity-redis.json``
  (``MEMORY USAGE`` on a real Valkey, :mod:`benchmarks.capacity_code`);
* derived from the code: Redis commands per block, Postgres round trips and rows per flush;
* assumptions: the target, the headroom, a server's size; stated in :class:`Assumptions`.

:func:`model` is pure arithmetic on those, so a test can check its properties on a synthetic
``latest.json``; :func:`render_table` and :func:`update_doc` write the table between markers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gatekeeper.settings import Settings

from . import capacity_code

__all__ = [
    "BEGIN",
    "END",
    "Assumptions",
    "Input",
    "Model",
    "load_inputs",
    "model",
    "render_table",
    "update_doc",
]

BEGIN: Final = "<!-- capacity:begin (python -m benchmarks capacity) -->"
END: Final = "<!-- capacity:end -->"


@dataclass(frozen=True)
class Assumptions:
    """What the model cannot measure on one 2-core machine; each is printed as an assumption."""

    target_rps: float = 1_000_000
    devices: int = 10_000_000
    precision_s: float = 60.0  # activity_touch_seconds: an active device is rewritten this often
    utilisation: float = 0.6  # proxy and recorder cores run at most this busy
    node_cores: int = 16  # cores of one proxy node
    redis_ops_per_shard: float = 100_000  # commands/s one Valkey primary takes with headroom
    redis_memory_per_shard_gib: float = 8.0  # maxmemory of one shard, half of a 16 GiB host
    keys_per_device: float = 1.0  # live device keys in the edge view's key hash
    denied_fraction: float = 0.02  # devices blocked or disabled (members of the edge sets)
    key_miss_fraction: float = 0.01  # requests that miss a worker's key cache (one HGET each)
    changes_per_min: float = 0.01  # share of active devices whose attributes change per minute
    new_per_day: float = 0.01  # share of the devices first seen per day
    blocks_per_s: float = 100.0  # admin blocks and unblocks per second, bulk included
    # Worker processes that see one device within one precision window: each limits touches on
    # its own (gatekeeper/edge/activity/recorder.py), so each writes its own row update.
    workers_per_device: float = 1.0


@dataclass(frozen=True)
class Input:
    name: str
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class Model:
    inputs: list[Input]
    outputs: list[Input]

    def value(self, name: str) -> float:
        for item in (*self.inputs, *self.outputs):
            if item.name == name:
                return item.value
        raise KeyError(name)


def _scenario(report: dict[str, Any], name: str) -> dict[str, Any]:
    for scenario in report["scenarios"]:
        if scenario["name"] == name and scenario["status"] == "ok":
            return dict(scenario)
    raise SystemExit(f"latest.json has no measured scenario {name!r}: run the proxy benchmark")


def load_inputs(results: Path) -> list[Input]:
    """The measured and code-derived inputs, from ``results`` (a benchmarks/results folder)."""
    latest = json.loads((results / "latest.json").read_text(encoding="utf-8"))
    src = "latest.json"
    gk1, gk2 = _scenario(latest, "gatekeeper-1"), _scenario(latest, "gatekeeper-2")
    slower = min((gk1, gk2), key=lambda s: float(s["rps"]))
    wb, touches = latest["writebehind"], latest["details"]["writebehind"]["touches_per_s"]
    items = [
        Input(
            "per-core req/s",
            float(slower["rps"]),
            "req/s",
            f"{src} scenarios[{slower['name']}].rps (the lower of gatekeeper-1/-2; proxy pinned to"
            " one core)",
        ),
        Input(
            "proxy CPU per request",
            float(slower["cpu_us_per_request"]),
            "µs",
            f"{src} scenarios[{slower['name']}].cpu_us_per_request",
        ),
        Input(
            "recorder CPU per request",
            float(slower["recorder_cpu_us_per_request"] or 0.0),
            "µs",
            f"{src} scenarios[{slower['name']}].recorder_cpu_us_per_request",
        ),
        Input(
            "instructions per request",
            float(slower["instructions_per_request"]),
            "instr",
            f"{src} scenarios[{slower['name']}].instructions_per_request",
        ),
        Input(
            "recorder touches/s",
            float(touches),
            "devices/s",
            f"{src} details.writebehind.touches_per_s (known devices, one recorder)",
        ),
        Input(
            "recorder new devices/s",
            float(wb["devices_per_s"]),
            "devices/s",
            f"{src} writebehind.devices_per_s (insert + first history, one recorder)",
        ),
        Input(
            "rows per new device",
            float(wb["rows_per_1000_requests"]),
            "rows",
            f"{src} writebehind.rows_per_1000_requests (1,000 requests of one new device)",
        ),
        Input(
            "block propagation p99",
            float(latest["propagation_ms"]["block_p99"]),
            "ms",
            f"{src} propagation_ms.block_p99 (2 proxies * 2 workers)",
        ),
    ]
    redis_file = results / "capacity-redis.json"
    if redis_file.exists():
        mem = json.loads(redis_file.read_text(encoding="utf-8"))
        where = f"capacity-redis.json ({mem['server']}, MEMORY USAGE of {mem['sample_entries']:,})"
        hash_bytes, set_bytes = mem["key_hash_bytes_per_entry"], mem["device_set_bytes_per_member"]
        items += [
            Input("key hash bytes/entry", hash_bytes, "B", f"{where} key_hash_bytes_per_entry"),
            Input(
                "device set bytes/member", set_bytes, "B", f"{where} device_set_bytes_per_member"
            ),
        ]
    else:
        # 64 hex digest + ~70-byte grant + hashtable entry and two sds headers; 47-byte member.
        layout = "derived from the key layout (no capacity-redis.json: run --measure-redis)"
        items += [
            Input("key hash bytes/entry", 190.0, "B", layout),
            Input("device set bytes/member", 70.0, "B", layout),
        ]
    code = capacity_code.redis_commands_per_change()
    derived = "derived: counted from edge_writes.set_blocked's pipeline (MULTI/EXEC included)"
    items += [
        Input("Redis commands per block", code["block"], "cmd", derived),
        Input("Redis commands per unblock", code["unblock"], "cmd", derived),
        Input(
            "PUBLISHes per block",
            code["block_publishes"],
            "msg",
            "derived: counted from edge_writes._block_events (one per announced change)",
        ),
        Input(
            "activity buffer per worker",
            Settings().activity_buffer_max_devices,
            "devices",
            "derived: default activity_buffer_max_devices (gatekeeper/settings.py)",
        ),
        Input(
            "devices per flush piece",
            capacity_code.PIECE_DEVICES,
            "devices",
            "derived: gatekeeper/edge/activity/writer.py _PIECE_DEVICES",
        ),
        Input(
            "round trips per flush piece",
            capacity_code.PIECE_ROUND_TRIPS,
            "stmt",
            "derived: activity/sql.py write_batch (BEGIN+SETs, data statement, COMMIT, pool reset)",
        ),
        Input(
            "rows per touch",
            capacity_code.ROWS_PER_TOUCH,
            "rows",
            "derived: KNOWN_ONE_SIGHTING updates device_activity",
        ),
        Input(
            "rows per attribute change",
            capacity_code.ROWS_PER_ATTRIBUTE_CHANGE,
            "rows",
            "derived: activity update + device_history + event_outbox",
        ),
    ]
    return items


def _assumed(a: Assumptions) -> list[Input]:
    src = "assumption"
    return [
        Input("target", a.target_rps, "req/s", src),
        Input("devices", a.devices, "devices", src),
        Input("activity precision", a.precision_s, "s", f"{src} (activity_touch_seconds)"),
        Input("core utilisation", a.utilisation, "", f"{src} (headroom: cores run ≤ this busy)"),
        Input("cores per proxy node", a.node_cores, "cores", src),
        Input("Redis ops/s per shard", a.redis_ops_per_shard, "ops/s", src),
        Input("Redis memory per shard", a.redis_memory_per_shard_gib, "GiB", f"{src} (maxmemory)"),
        Input("keys per device", a.keys_per_device, "keys", src),
        Input("denied share", a.denied_fraction, "", f"{src} (blocked or disabled devices)"),
        Input("key cache miss share", a.key_miss_fraction, "", f"{src} (one HGET per miss)"),
        Input("attribute changes", a.changes_per_min, "/device/min", src),
        Input("new devices", a.new_per_day, "/device/day", src),
        Input("admin blocks+unblocks", a.blocks_per_s, "/s", src),
        Input("workers seeing a device per window", a.workers_per_device, "workers", src),
    ]


def model(measured: list[Input], a: Assumptions) -> Model:
    """The outputs, from ``measured`` (:func:`load_inputs`) and the assumptions ``a``."""
    m = {i.name: i.value for i in measured}
    out: list[Input] = []

    def put(name: str, value: float, unit: str, how: str) -> float:
        out.append(Input(name, value, unit, how))
        return value

    cpu_us = m["proxy CPU per request"] + m["recorder CPU per request"]
    busy_by_cpu = a.target_rps * cpu_us / 1e6
    busy_by_rps = a.target_rps / m["per-core req/s"]
    busy = put(
        "busy cores (larger of two estimates)",
        max(busy_by_cpu, busy_by_rps),
        "cores",
        "max(target * (proxy + recorder CPU µs) / 1e6, target / per-core req/s)",
    )
    cores = put(
        "proxy cores", math.ceil(busy / a.utilisation), "cores", "⌈busy cores / utilisation⌉"
    )
    nodes = put(
        "proxy nodes", math.ceil(cores / a.node_cores), "nodes", "⌈proxy cores / cores per node⌉"
    )
    put(
        "instructions/s at target",
        a.target_rps * m["instructions per request"] / 1e9,
        "G/s",
        "target * instructions per request",
    )
    # Redis: the edge view's memory and the commands traffic and admins send.
    key_entries = a.devices * a.keys_per_device
    set_members = a.devices * a.denied_fraction
    mem_gib = put(
        "Redis memory, edge view",
        (key_entries * m["key hash bytes/entry"] + set_members * m["device set bytes/member"])
        / 2**30,
        "GiB",
        "devices * keys * hash B/entry + devices * denied * set B/member",
    )
    known = put(
        "devices known per worker",
        a.devices * a.workers_per_device / (nodes * a.node_cores),
        "devices",
        "devices * workers seeing one / workers; above activity_buffer_max_devices"
        f" ({m['activity buffer per worker']:,.0f}) a worker forgets its touches and writes more",
    )
    if known > m["activity buffer per worker"]:
        put(
            "WARNING: touch limiting resets",
            known / m["activity buffer per worker"],
            "x",
            "raise activity_buffer_max_devices",
        )
    change_cmds = (m["Redis commands per block"] + m["Redis commands per unblock"]) / 2
    deliveries = put(
        "change-feed deliveries per block",
        m["PUBLISHes per block"] * nodes * a.node_cores,
        "msg",
        "PUBLISHes * nodes * workers per node (one subscription per worker, a worker per core)",
    )
    ops = put(
        "Redis commands/s",
        a.target_rps * a.key_miss_fraction + a.blocks_per_s * (change_cmds + deliveries),
        "ops/s",
        "target * key miss share + blocks/s * (commands + deliveries per change); the mirror"
        " reads no Redis per request",
    )
    put(
        "Redis shards",
        max(
            1,
            math.ceil(mem_gib / a.redis_memory_per_shard_gib),
            math.ceil(ops / a.redis_ops_per_shard),
        ),
        "primaries",
        "max(⌈memory / per shard⌉, ⌈ops / per shard⌉), each with a replica",
    )
    # Postgres: every active device once per precision window, plus changes and new devices.
    touches = a.devices * a.workers_per_device / a.precision_s
    changes = a.devices * a.changes_per_min / 60
    new = a.devices * a.new_per_day / 86_400
    put(
        "Postgres rows/s",
        touches * m["rows per touch"]
        + changes * m["rows per attribute change"]
        + new * m["rows per new device"],
        "rows/s",
        "devices * workers/precision * rows per touch + changes * rows + new * rows",
    )
    device_writes = touches + changes + new
    pieces = device_writes / m["devices per flush piece"]
    put("Postgres transactions/s", pieces, "tx/s", "device writes/s ÷ devices per piece")
    put(
        "Postgres statements/s",
        pieces * m["round trips per flush piece"],
        "stmt/s",
        "transactions/s * round trips per piece",
    )
    put(
        "recorders needed",
        math.ceil(
            (touches + changes) / (m["recorder touches/s"] * a.utilisation)
            + new / (m["recorder new devices/s"] * a.utilisation)
        ),
        "processes",
        "⌈touches / (touches/s * utilisation) + new / (new devices/s * utilisation)⌉",
    )
    return Model([*_assumed(a), *measured], out)


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def render_table(result: Model) -> str:
    lines = ["| | figure | value | unit | source or formula |", "|---|---|---:|---|---|"]
    for kind, items in (("in", result.inputs), ("out", result.outputs)):
        for item in items:
            source = item.source.replace("|", "\\|")
            lines.append(f"| {kind} | {item.name} | {_fmt(item.value)} | {item.unit} | {source} |")
    return "\n".join(lines) + "\n"


def update_doc(doc: Path, table: str, *, check: bool = False) -> bool:
    """Put ``table`` between the markers of ``doc``; with ``check``, only say whether it is."""
    text = doc.read_text(encoding="utf-8")
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{doc} has no capacity markers ({BEGIN} … {END})")
    new = f"{head}{BEGIN}\n{table}{END}{tail}"
    if check:
        return new == text
    doc.write_text(new, encoding="utf-8")
    return True
