"""``python -m bench``: run the benchmark (docs/bench.md). ``--smoke`` for the CI smoke."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import harness
from bench.peers import PEERS


def _csv(kind):
    def parse(text: str):
        return tuple(kind(item) for item in text.split(",") if item)

    return parse


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: list[str]) -> harness.Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="lbproxy against HAProxy, nginx and the Python proxies (proxy.py, "
        "mitmdump, aiohttp, uvicorn, granian), one run on 127.0.0.1 (docs/bench.md).",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI smoke: direct, haproxy, nginx, lbproxy-2w (on and off) at 1 and 100 "
        "connections, 2 s each after 1 s warm-up",
    )
    parser.add_argument("--duration", type=int, help="measured seconds per configuration (4)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds before each (1)")
    parser.add_argument(
        "--peers", type=_csv(str), help=f"comma-separated subset of: {', '.join(PEERS)}"
    )
    parser.add_argument(
        "--connections", type=_csv(int), help="main table's connection counts (1,100,400)"
    )
    parser.add_argument(
        "--sections",
        type=_csv(str),
        help=f"comma-separated subset of: {', '.join(harness.SECTIONS)} (tls: HAProxy and "
        "lbproxy-2w terminating TLS, HTTP/1.1, HTTP/2 and a handshake per request; websocket: "
        "WebSocket echo through lbproxy-2w and nginx, and direct; ratelimit: lbproxy-2w with no "
        "limit, a local and a global one)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help=f"measure the main section's {harness.REPEAT_CONNECTIONS}-connection point N times, "
        "in rounds across the peers, and report the median (3; smoke: 1)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="start each chosen proxy, check that it passes the upstream's response and "
        "request headers and body through intact, stop it; measure nothing",
    )
    parser.add_argument("--out", type=Path, help="output directory (bench/out)")
    parser.add_argument(
        "--no-install", action="store_true", help="do not run scripts/install/bench.sh"
    )
    results = parser.add_mutually_exclusive_group()
    results.add_argument(
        "--results", action="store_true", default=None, help="write bench/RESULTS.md anyway"
    )
    results.add_argument(
        "--no-results",
        dest="results",
        action="store_false",
        help="never write bench/RESULTS.md (default: only a full run writes it)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=int,
        metavar="SECONDS",
        help="wait up to this long for other processes to use < 10%% CPU "
        "(default 120 for a full run, 0 otherwise)",
    )
    parser.add_argument(
        "--busy-retries",
        type=int,
        metavar="N",
        help="measure a case again (up to N times) when other processes used >= 10%% CPU "
        "during it or the host slowed the VM (docs/bench.md#was-the-machine-quiet), keeping "
        "the least disturbed attempt (default 3 for a full run, 0 otherwise; 5 more for the "
        "runs issue 22's targets compare)",
    )
    parser.add_argument(
        "--retry-wait",
        type=int,
        metavar="SECONDS",
        help="before each such retry, wait up to this long for a quiet machine (60)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        metavar="SECONDS",
        help="no more waiting or retrying after this long; the run still completes (1200)",
    )
    parser.add_argument(
        "--on-env",
        type=_env,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra/overriding environment of lbproxy's 'features on' variants",
    )
    parser.add_argument(
        "--off-env",
        type=_env,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of lbproxy's 'features off' variants",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    parser.add_argument("--plan", action="store_true", help="print the plan and exit")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing: write the markdown (and, with --results, bench/RESULTS.md) "
        "again from a run's JSON",
    )
    args = parser.parse_args(argv)

    options = harness.Options(argv=list(argv))
    if args.smoke:
        options.smoke = True
        options.duration, options.warmup = 2, 1
        options.peers = harness.SMOKE_PEERS
        options.connections = (1, 100)
        options.sections = ("main",)
        options.repeats = 1
    if args.check:
        options.check = True
        options.sections = ("main",)
    for name in ("duration", "warmup", "peers", "connections", "sections", "out", "repeats"):
        if getattr(args, name) is not None:
            setattr(options, name, getattr(args, name))
    unknown = set(options.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    unknown = set(options.sections) - set(harness.SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if options.duration < 1 or options.warmup < 0:
        parser.error("--duration must be >= 1 and --warmup >= 0 (whole seconds: wrk's unit)")
    if options.repeats < 1:
        parser.error("--repeats must be >= 1")
    options.install = not args.no_install
    options.results = args.results
    options.keep = args.keep
    options.on_env = dict(args.on_env)
    options.off_env = dict(args.off_env)
    if args.wait_quiet is not None:
        options.wait_quiet = args.wait_quiet
    elif options.full:
        options.wait_quiet = 120
    if args.busy_retries is not None:
        options.busy_retries = args.busy_retries
    elif options.full:
        options.busy_retries = 3
    if args.retry_wait is not None:
        options.retry_wait = args.retry_wait
    if args.budget is not None:
        options.budget = args.budget
    if args.render:
        paths = harness.render(args.render, options)
        for kind, path in paths.items():
            print(f"bench: {kind}: {path}")
        raise SystemExit(0)
    if args.plan:
        for peer, cases in harness.plan(options):
            shown = ", ".join(c.name for c in cases)
            print(f"{peer.name:<15} {shown}")
        for number, each in enumerate(harness.plan_repeats(options), start=2):
            print(f"repeat round {number}: {', '.join(peer.name for peer, _ in each)}")
        print(f"about {harness.estimate_seconds(options):.0f} s")
        raise SystemExit(0)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    return harness.main(options)


if __name__ == "__main__":
    sys.exit(main())
