"""Drive a server with load: ``wrk`` when installed, else the built-in client in a subprocess.

Both rotate the same device headers over the same ids and report the same summary:
``{"rps", "p50_ms", "p99_ms", "requests", "errors", "non2xx", "duration_s", "tool"}``.
``wrk`` latencies come from its own percentiles (printed by the Lua ``done`` hook).
Fixed-rate (paced) load always uses the built-in client: ``wrk2`` is not packaged by Debian and
``wrk``'s Lua ``delay()`` paces per connection after each answer, which is not a fixed rate.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import HOST, HarnessError, python_module

__all__ = ["LoadGen", "Summary", "pick_loadgen"]

Summary = dict[str, Any]

_LUA = """\
-- Rotates the gatekeeper benchmark's device headers over N device ids (argument 1).
local reqs = {}
local count = 0
local pos = 1
local threads = 0

function setup(thread)
   thread:set("offset", threads)
   threads = threads + 1
end

function init(args)
   count = tonumber(args[1] or "10000")
   local headers = {
      ["Host"] = "127.0.0.1",
      ["X-App-Name"] = "bench-app", ["X-App-Version"] = "1.0.0",
      ["X-OS-Name"] = "Linux", ["X-OS-Version"] = "6.1",
      ["X-Device-Manufacturer"] = "Bench", ["X-Device-Model"] = "B-1",
      ["User-Agent"] = "gatekeeper-bench",
   }
   for i = 0, count - 1 do
      headers["X-Device-Id"] = string.format("bench-%05d", i)
      reqs[i + 1] = wrk.format("GET", wrk.path, headers)
   end
   pos = ((offset or 0) * 3331) % count + 1
end

function request()
   local r = reqs[pos]
   pos = pos % count + 1
   return r
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,' ..
      '"p50_us":%.1f,"p99_us":%.1f}\\n',
      summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
      e.status, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True, slots=True)
class LoadGen:
    """How load is generated in this run."""

    tool: str  # "wrk" or "builtin"
    connections: int
    devices: int
    work: Path

    def describe(self) -> str:
        if self.tool == "wrk":
            return (
                f"wrk (1 thread, {self.connections} connections, Lua script rotating "
                f"{self.devices} device ids)"
            )
        return (
            f"built-in client (benchmarks/loadclient.py, raw asyncio + uvloop + httptools, "
            f"{self.connections} connections, {self.devices} device ids)"
        )

    def closed(self, port: int, path: str, duration: float, prefix: list[str]) -> Summary:
        """Maximum rate: every connection sends again as soon as it has its answer."""
        if self.tool == "wrk":
            return self._wrk(port, path, duration, prefix)
        return self._builtin(port, path, duration, prefix, rate=None, connections=self.connections)

    def paced(
        self,
        port: int,
        path: str,
        duration: float,
        rate: float,
        prefix: list[str],
        connections: int = 32,
    ) -> Summary:
        """A fixed total rate (requests/s), always with the built-in client (see module doc)."""
        return self._builtin(port, path, duration, prefix, rate=rate, connections=connections)

    def _wrk(self, port: int, path: str, duration: float, prefix: list[str]) -> Summary:
        script = self.work / "devices.lua"
        if not script.exists():
            script.write_text(_LUA)
        seconds = max(1, math.ceil(duration))  # wrk takes whole seconds
        argv = [
            *prefix,
            "wrk",
            "-t1",
            f"-c{self.connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://{HOST}:{port}{path}",
            "--",
            str(self.devices),
        ]
        out = _run(argv, timeout=seconds + 30)
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise HarnessError(f"wrk printed no result:\n{out[-2000:]}")
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        secs = raw["duration_us"] / 1e6
        return {
            "tool": "wrk",
            "requests": raw["requests"],
            "errors": raw["errors"],
            "non2xx": raw["non2xx"],
            "duration_s": round(secs, 3),
            "rps": raw["requests"] / secs if secs else 0.0,
            "p50_ms": raw["p50_us"] / 1000.0,
            "p99_ms": raw["p99_us"] / 1000.0,
        }

    def _builtin(
        self,
        port: int,
        path: str,
        duration: float,
        prefix: list[str],
        rate: float | None,
        connections: int,
    ) -> Summary:
        args = [
            "--port",
            str(port),
            "--path",
            path,
            "--connections",
            str(connections),
            "--duration",
            str(duration),
            "--devices",
            str(self.devices),
        ]
        if rate is not None:
            args += ["--rate", f"{rate:.1f}"]
        out = _run([*prefix, *python_module("benchmarks.loadclient", *args)], timeout=duration + 30)
        try:
            summary: Summary = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise HarnessError(f"load client printed no result:\n{out[-2000:]}") from exc
        summary["tool"] = "builtin-paced" if rate is not None else "builtin"
        return summary


def _run(argv: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"load generator did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise HarnessError(f"{argv[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def pick_loadgen(work: Path, use_wrk: bool, connections: int, devices: int) -> LoadGen:
    """``wrk`` if allowed and installed, else the built-in client."""
    tool = "wrk" if use_wrk and shutil.which("wrk") else "builtin"
    return LoadGen(tool=tool, connections=connections, devices=devices, work=work)
