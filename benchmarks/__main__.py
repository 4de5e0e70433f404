"""``python -m benchmarks proxy|soak|reliability|capacity|flushevents``: the proxy benchmark
suite, a bounded soak, the reliability report (docs/reliability.md), the capacity model
(docs/scaling.md), and what the outbox events cost the recorder's flush (docs/performance.md).

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
_RELIABILITY_DOC = _HERE.parent / "docs" / "reliability.md"
_SCALING_DOC = _HERE.parent / "docs" / "scaling.md"


def _minutes(text: str) -> float:
    """A soak length in minutes, refused beyond the cap so a typo cannot hold the machine."""
    from .soak import MAX_MINUTES

    value = float(text)
    if not 0 <= value <= MAX_MINUTES:
        raise argparse.ArgumentTypeError(f"minutes must be between 0 and {MAX_MINUTES:g}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="run the proxy benchmark suite")
    proxy.add_argument(
        "--quick", action="store_true", help="short pass (2 s runs, 50 trials): under two minutes"
    )
    proxy.add_argument("--duration", type=float, help="seconds per run (default 10; quick 2)")
    proxy.add_argument("--runs", type=int, help="runs per scenario, median reported (default 3)")
    proxy.add_argument("--warmup", type=float, help="warm-up seconds (default 3; quick 1)")
    proxy.add_argument("--trials", type=int, help="propagation trials (default 200; quick 50)")
    proxy.add_argument(
        "--writebehind-seconds",
        type=float,
        help="recorder flush-rate measurement time (default 5; quick 2)",
    )
    proxy.add_argument("--connections", type=int, default=64, help="load connections")
    proxy.add_argument("--devices", type=int, default=10_000, help="distinct device ids")
    proxy.add_argument(
        "--only", help="comma-separated subset of: " + ",".join((*SCENARIOS, *EXTRAS))
    )
    proxy.add_argument("--no-nginx", action="store_true", help="do not use nginx even if found")
    proxy.add_argument("--no-wrk", action="store_true", help="do not use wrk even if found")
    proxy.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    proxy.add_argument(
        "--out",
        type=Path,
        default=_DEFAULT_OUT,
        help="directory for latest.json/.md/.png (default benchmarks/results)",
    )
    proxy.add_argument(
        "--update-docs",
        action="store_true",
        help="also rewrite the results section of docs/performance.md",
    )
    proxy.add_argument("--quiet", action="store_true", help="no progress lines")

    soak = sub.add_parser("soak", help="steady mixed traffic for a bounded time; memory verdict")
    soak.add_argument(
        "--minutes",
        type=_minutes,
        default=2.0,
        help="how long the load runs (default 2, at most 60)",
    )
    # Only for tests/test_soak_quick.py: a run of a few seconds, shorter than a minute allows.
    soak.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    soak.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    soak.add_argument("--rate", type=float, default=600.0, help="requests per second, paced")
    soak.add_argument("--devices", type=int, default=5_000, help="devices in the pool")
    soak.add_argument("--workers", type=int, default=2, help="proxy worker processes")
    soak.add_argument("--no-admin", action="store_true", help="do not start the admin API")
    soak.add_argument(
        "--out",
        type=Path,
        default=_DEFAULT_OUT,
        help="directory for soak-latest.json/.md (default benchmarks/results)",
    )
    soak.add_argument("--quiet", action="store_true", help="no progress lines")

    rel = sub.add_parser(
        "reliability", help="run the probe tests and a soak; write docs/reliability.md"
    )
    # 6 minutes: the workers warm up for about 75 s, so a shorter soak judges the warm-up.
    rel.add_argument(
        "--soak-minutes",
        type=_minutes,
        default=6.0,
        help="length of the soak (default 6; 0 skips it)",
    )
    rel.add_argument("--out", type=Path, default=_RELIABILITY_DOC, help="the page to write")
    rel.add_argument("--quiet", action="store_true", help="no progress lines")

    cap = sub.add_parser(
        "capacity", help="the capacity model from measured figures; rewrite docs/scaling.md"
    )
    cap.add_argument(
        "--results",
        type=Path,
        default=_DEFAULT_OUT,
        help="folder with latest.json and capacity-redis.json (default benchmarks/results)",
    )
    cap.add_argument("--doc", type=Path, default=_SCALING_DOC, help="the page to write")
    cap.add_argument(
        "--check", action="store_true", help="only check that the page holds the current table"
    )
    cap.add_argument(
        "--measure-redis",
        action="store_true",
        help="first measure bytes per edge-view entry on a Valkey of its own",
    )
    cap.add_argument("--target-rps", type=float, help="requests per second (default 1,000,000)")
    cap.add_argument("--devices", type=int, help="devices (default 10,000,000)")

    from .flushevents import add_arguments as flushevents_arguments

    flushevents_arguments(
        sub.add_parser(
            "flushevents",
            help="flush of a flood of new devices with and without outbox events, same run",
        )
    )
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
        duration=pick(args.duration, 10.0, 2.0),
        runs=int(pick(args.runs, 3, 3)),
        warmup=pick(args.warmup, 3.0, 1.0),
        trials=int(pick(args.trials, 200, 50)),
        writebehind_seconds=pick(args.writebehind_seconds, 5.0, 2.0),
        connections=args.connections,
        devices=args.devices,
        use_nginx=not args.no_nginx,
        use_wrk=not args.no_wrk,
        pin=not args.no_pin,
        only=only,
        quick=quick,
    )


def _soak(args: argparse.Namespace) -> int:
    from .soak import MAX_MINUTES, SoakOptions, run_soak
    from .soakverdict import analyse, write_soak_outputs

    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    if not 0 < seconds <= MAX_MINUTES * 60 or args.interval < 0.2:
        raise SystemExit("the soak needs 0 < length <= 60 minutes and an interval >= 0.2 s")
    options = SoakOptions(
        seconds=seconds,
        interval=args.interval,
        rate=args.rate,
        devices=args.devices,
        workers=args.workers,
        admin=not args.no_admin,
    )
    progress = Progress(quiet=args.quiet)
    result = analyse(run_soak(options, progress))
    paths = write_soak_outputs(result, args.out)
    progress.say(f"verdict: {result['analysis']['verdict']}")
    progress.say("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _reliability(args: argparse.Namespace) -> int:
    from .reliability import generate

    progress = Progress(quiet=args.quiet)
    out, runs = generate(args.out, args.soak_minutes * 60, progress)
    for run in runs:
        progress.say(f"{run.path}: {run.status}, {len(run.records)} figure(s)")
    progress.say(f"wrote {out}")
    return 0


def _capacity(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .capacity import Assumptions, load_inputs, model, render_table, update_doc
    from .capacity_code import measure_on_embedded

    if args.measure_redis:
        print(measure_on_embedded(args.results / "capacity-redis.json"))
    assumptions = Assumptions()
    if args.target_rps is not None:
        assumptions = replace(assumptions, target_rps=args.target_rps)
    if args.devices is not None:
        assumptions = replace(assumptions, devices=args.devices)
    table = render_table(model(load_inputs(args.results), assumptions))
    print(table, end="")
    if args.check:
        if not update_doc(args.doc, table, check=True):
            print(f"{args.doc} is not current: run python -m benchmarks capacity", file=sys.stderr)
            return 1
        return 0
    update_doc(args.doc, table)
    print(f"wrote {args.doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "capacity":
        return _capacity(args)
    if args.command == "soak":
        return _soak(args)
    if args.command == "reliability":
        return _reliability(args)
    if args.command == "flushevents":
        from .flushevents import run as flushevents

        return flushevents(args)
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
