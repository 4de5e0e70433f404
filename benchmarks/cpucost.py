"""CPU cost of one proxied request, counted by the processor rather than timed.

``python -m benchmarks.cpucost [--requests N]`` starts the built-in upstream and
``gatekeeper up --upstream`` (embedded stores, in a temporary data directory), warms it up,
then sends N keep-alive requests from 1,000 devices over 4 connections while
``perf stat -e cycles,instructions`` watches the proxy's processes (its worker, the recorder
process and the supervisor; not the embedded stores), and prints both per request, in all and
for the worker alone (the serving loop). ``--https`` measures twice in one run, against the
same upstream served over plain HTTP and over TLS (a throwaway CA made with trustme, the proxy
verifying it through ``upstream_tls_ca_file``), and prints both: the cost of an https upstream.
Instruction counts move by well under 1 % between runs on a shared machine where req/s moves by
20 %, so this is the figure to compare before and after a change to the hot path (run it in
both trees, interleaved). Needs ``perf`` (Debian: linux-perf). Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gatekeeper.runtime.embedded import free_port

from .procfs import children_by_parent, runs_module

_CONNECTIONS = 4
_DEVICES = 1000


async def _load(port: int, total: int) -> None:
    async def one(conn: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(total // _CONNECTIONS):
            device = (conn * 7919 + i) % _DEVICES
            writer.write(
                b"GET /api/acme/ping/%d HTTP/1.1\r\nHost: x\r\nX-Device-Id: dev-%d\r\n"
                b"X-App-Name: Bench\r\n\r\n" % (i, device)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(one(c) for c in range(_CONNECTIONS)))


def _wait_ready(metrics_port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz") as answer:
                if answer.status == 200 and json.load(answer).get("status") == "ready":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("gatekeeper up did not become ready")


def _proxy_processes(root: int, module: str) -> list[int]:
    """Children of ``root`` running ``python -m module``."""
    found = [pid for pid in children_by_parent().get(root, ()) if runs_module(pid, module)]
    if not found:
        raise SystemExit(f"no {module} process under gatekeeper up ({root})")
    return found


def _start_perf(pids: list[int], out: Path) -> tuple[subprocess.Popen[bytes], Path]:
    command = ["perf", "stat", "-x,", "-e", "cycles,instructions"]
    command += ["-p", ",".join(map(str, pids)), "-o", str(out)]
    return subprocess.Popen(command), out


def _tls_files(folder: Path) -> tuple[list[str], dict[str, str]]:
    """The upstream's TLS flags and the proxy's settings for it, from a throwaway CA."""
    import trustme  # a dev dependency: only --https needs it

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, bundle = folder / "up.crt", folder / "up.key", folder / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    return ["--tls-cert", str(cert), "--tls-key", str(key)], {
        "GATEKEEPER_UPSTREAM_TLS_CA_FILE": str(bundle)
    }


def measure(requests: int, *, https: bool = False) -> dict[str, float]:
    upstream_port, proxy, admin, metrics = (free_port() for _ in range(4))
    with tempfile.TemporaryDirectory() as data_dir:
        upstream_tls, proxy_env = _tls_files(Path(data_dir)) if https else ([], {})
        upstream = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.builtin_upstream",
                "--port",
                str(upstream_port),
                *upstream_tls,
            ],
            stdout=subprocess.DEVNULL,
        )
        stack = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gatekeeper",
                "up",
                "--upstream",
                f"{'https' if https else 'http'}://127.0.0.1:{upstream_port}",
                "--data-dir",
                data_dir,
                "--proxy-port",
                str(proxy),
                "--admin-port",
                str(admin),
                "--metrics-port",
                str(metrics),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ | proxy_env,
        )
        try:
            _wait_ready(metrics)
            asyncio.run(_load(proxy, max(requests // 5, _CONNECTIONS)))  # warm-up
            workers = _proxy_processes(stack.pid, "gatekeeper.runtime.worker")
            recorders = _proxy_processes(stack.pid, "gatekeeper.runtime.recorder")
            watched = {
                "": [stack.pid, *workers, *recorders],
                "worker ": workers,
            }
            perfs = {
                label: _start_perf(pids, Path(data_dir) / f"perf{i}.csv")
                for i, (label, pids) in enumerate(watched.items())
            }
            time.sleep(0.3)
            asyncio.run(_load(proxy, requests))
            counts = {}
            for label, (perf, out) in perfs.items():
                perf.send_signal(signal.SIGINT)
                perf.wait(10)
                counts.update(
                    {
                        label + line.split(",")[2]: float(line.split(",")[0])
                        for line in out.read_text().splitlines()
                        if line and not line.startswith("#") and line.split(",")[0][:1].isdigit()
                    }
                )
        finally:
            for proc in (stack, upstream):
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return {name.split(":")[0]: value / requests for name, value in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpucost", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument(
        "--https",
        action="store_true",
        help="measure a plain-HTTP and an https upstream, one after the other, and print both",
    )
    args = parser.parse_args()
    requests = min(args.requests, 1_000_000)
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "?"
    )
    for scheme in ("http", "https") if args.https else ("",):
        per_request = measure(requests, https=scheme == "https")
        label = f" ({scheme} upstream)" if scheme else ""
        print(
            f"commit {commit}{label}: "
            + ", ".join(f"{name} {value:,.0f}" for name, value in sorted(per_request.items()))
            + " per request"
        )


if __name__ == "__main__":
    main()
