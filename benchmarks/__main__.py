"""``python -m benchmarks proxy``: run the proxy benchmark suite and write the results.

The harness installs nothing. With ``nginx`` and ``wrk`` installed (``apt-get install nginx
wrk``) it uses them; without, it says so and falls back to built-in equivalents.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .progress import Progress
from .report import update_docs, write_outputs
from .suite import EXTRAS, SCENARIOS, Options, Suite

_HERE = Path(__file__).resolve().parent
_DEFAULT_OUT = _HERE / "results"
_DOCS = _HERE.parent / "docs" / "performance.md"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="run the proxy benchmark suite")
    proxy.add_argument("--quick", action="store_true",
                       help="short pass (2 s runs, 50 trials): under two minutes")
    proxy.add_argument("--duration", type=float, help="seconds per run (default 10; quick 2)")
    proxy.add_argument("--runs", type=int, help="runs per scenario, median reported (default 3)")
    proxy.add_argument("--warmup", type=float, help="warm-up seconds (default 3; quick 1)")
    proxy.add_argument("--trials", type=int, help="propagation trials (default 200; quick 50)")
    proxy.add_argument("--writebehind-seconds", type=float,
                       help="recorder flush-rate measurement time (default 5; quick 2)")
    proxy.add_argument("--connections", type=int, default=64, help="load connections")
    proxy.add_argument("--devices", type=int, default=10_000, help="distinct device ids")
    proxy.add_argument("--only", help="comma-separated subset of: "
                       + ",".join((*SCENARIOS, *EXTRAS)))
    proxy.add_argument("--no-nginx", action="store_true", help="do not use nginx even if found")
    proxy.add_argument("--no-wrk", action="store_true", help="do not use wrk even if found")
    proxy.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    proxy.add_argument("--out", type=Path, default=_DEFAULT_OUT,
                       help="directory for latest.json/.md/.png (default benchmarks/results)")
    proxy.add_argument("--update-docs", action="store_true",
                       help="also rewrite the results section of docs/performance.md")
    proxy.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _options(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)
    only = frozenset((*SCENARIOS, *EXTRAS))
    if args.only:
        only = frozenset(name.strip() for name in args.only.split(",") if name.strip())
        unknown = only - {*SCENARIOS, *EXTRAS}
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    def pick(value: float | None, full: float, short: float) -> float:
        return value if value is not None else (short if quick else full)

    return Options(
        duration=pick(args.duration, 10.0, 2.0), runs=int(pick(args.runs, 3, 3)),
        warmup=pick(args.warmup, 3.0, 1.0), trials=int(pick(args.trials, 200, 50)),
        writebehind_seconds=pick(args.writebehind_seconds, 5.0, 2.0),
        connections=args.connections, devices=args.devices, use_nginx=not args.no_nginx,
        use_wrk=not args.no_wrk, pin=not args.no_pin, only=only, quick=quick,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = _options(args)
    progress = Progress(quiet=args.quiet)
    with tempfile.TemporaryDirectory(prefix="gatekeeper-bench-") as work:
        report = Suite(options, Path(work), progress).run()
    paths = write_outputs(report, args.out)
    if args.update_docs and not update_docs(report, _DOCS):
        progress.say(f"{_DOCS} has no results markers; not updated")
    progress.say(f"done in {progress.elapsed():.0f}s: " + ", ".join(str(p) for p in paths))
    for item in report["skipped"]:
        progress.say(f"skipped {item['name']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
