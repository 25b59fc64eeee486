"""Machine instructions per proxied request, counted by valgrind: a figure that
does not move with the host.

``python -m bench.instructions`` (``--help``): lbproxy with 1 worker runs under
``valgrind --tool=callgrind`` with counting off; after a warm-up, counting is
turned on in the worker alone (``callgrind_control -i on``), a fixed number of
requests goes through it over a few keep-alive connections, and the worker's
count is dumped. The figure is the worker's user-space instructions divided by
the requests: the kernel's work (syscalls) is not in it, the Python the
request runs is.

Why: a VM's host slows it in spells that no process inside can see
(bench/hostspeed.py), so a change of a few µs per request drowns in the load
runs' noise. An instruction count is the same from one run to the next whatever
the host does (within about 2%, from the work a worker does each second: its
gauge reports and log flushes fall a little differently into each count; the
median of ``--repeats`` counts is reported), so a change on the hot path is
measured by this before it goes to a full run (docs/bench.md, "Instructions per
request"). It is no time: instructions differ in cost, and under callgrind a
worker runs some 50 times slower, so its event loop meets more ready sockets
per poll than at full speed.

The upstream is the bench's nginx (bench/peers.py); lbproxy's config and
environment are the bench's ``lbproxy-1w`` (on) or ``lbproxy-1w-off``, with
its StatsD datagrams going to bench/sink.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from bench import peers
from bench.harness import lbproxy_bytecode, wait_ready
from devkit.processes import Registry, StartError, free_port

VARIANTS = {"on": "lbproxy-1w", "off": "lbproxy-1w-off"}
PATH = "/1k"
HEADERS = (("Host", peers.BENCH_DOMAIN), ("User-Agent", "bench-instructions"), ("Accept", "*/*"))
STARTUP_S = 300  # gunicorn's start under valgrind: 10-20 s here
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


@dataclass(frozen=True)
class Count:
    variant: str
    requests: int
    instructions: int
    errors: int

    @property
    def per_request(self) -> int:
        return round(self.instructions / self.requests)


def send_requests(port: int, total: int, connections: int, timeout: float = 60.0) -> int:
    """``total`` GETs over ``connections`` keep-alive connections, each answered
    in full before the next; returns how many failed (not a 200 with its body)."""
    errors = [0] * connections

    def one_connection(index: int, count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            for _ in range(count):
                # The same head every time, with no header http.client would add.
                connection.putrequest("GET", PATH, skip_host=True, skip_accept_encoding=True)
                for name, value in HEADERS:
                    connection.putheader(name, value)
                connection.endheaders()
                answer = connection.getresponse()
                answer.read()
                errors[index] += answer.status != 200
        except (OSError, http.client.HTTPException):
            errors[index] = count
        finally:
            connection.close()

    share = [total // connections + (i < total % connections) for i in range(connections)]
    threads = [threading.Thread(target=one_connection, args=(i, n)) for i, n in enumerate(share)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(errors)


def callgrind_total(dump: Path) -> int:
    """The instruction total of a callgrind dump."""
    found = _TOTALS.search(dump.read_text(errors="replace"))
    if found is None:
        raise ValueError(f"{dump}: no instruction total")
    return int(found[1])


def control(pid: int, *args: str) -> None:
    """callgrind_control on the valgrind'ed process ``pid``."""
    subprocess.run(["callgrind_control", *args, str(pid)], check=True,
                   capture_output=True, timeout=120)  # fmt: skip


@dataclass(frozen=True)
class Setup:
    requests: int
    warmup: int
    connections: int
    tmp: Path
    upstream_port: int


def count(variant: str, setup: Setup, procs: Registry) -> Count:
    """Start the variant under callgrind, send the warm-up, count ``setup.requests``."""
    home = setup.tmp / variant
    port = free_port()
    extra = {"admin_port": free_port(), "statsd_port": free_port(), "on_env": {}, "off_env": {}}
    launch = peers.launch(peers.PEERS[VARIANTS[variant]], home, port, setup.upstream_port, extra)
    if variant == "on":
        sink = peers.sink_args(extra["statsd_port"], home / "statsd.json")
        procs.start("statsd-sink", sink, home / "sink.log", cwd=peers.REPO)
    valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no",
                f"--callgrind-out-file={home}/callgrind.%p"]  # fmt: skip
    proxy = procs.start(variant, valgrind + launch.args, home / "proxy.log",
                        env=launch.env, cwd=launch.cwd, stop_signal=launch.stop_signal)  # fmt: skip
    wait_ready(proxy, port, processes=2, timeout=STARTUP_S)  # the master and its worker
    worker = proxy.tree()[1]
    errors = send_requests(port, setup.warmup, setup.connections)
    control(worker, "-i", "on")
    errors += send_requests(port, setup.requests, setup.connections)
    control(worker, "-d")
    control(worker, "-i", "off")
    procs.stop(proxy, timeout=60)
    dumps = sorted(home.glob(f"callgrind.{worker}.*"))  # the dump of "-d", then the exit's
    if not dumps:
        raise StartError(f"{variant}: no callgrind dump of worker {worker}")
    return Count(variant, setup.requests, callgrind_total(dumps[0]), errors)


def run(
    variants: list[str], requests: int, warmup: int, connections: int, repeats: int = 1
) -> list[Count]:
    """``repeats`` counts of each variant, each with a proxy started afresh."""
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None:
            raise StartError(f"{tool} is not installed (apt-get install valgrind nginx)")
    lbproxy_bytecode()  # lbproxy runs as its image does (bench/harness.py)
    procs = Registry(timeout=30)
    with tempfile.TemporaryDirectory(prefix="lbproxy-instructions-") as name:
        setup = Setup(requests, warmup, connections, Path(name), free_port())
        setup.tmp.chmod(0o755)  # nginx's workers (www-data when started as root) read under it
        try:
            launch = peers.upstream(setup.tmp / "upstream", setup.upstream_port)
            upstream = procs.start("upstream", launch.args, setup.tmp / "upstream.log",
                                   env=launch.env, stop_signal=launch.stop_signal)  # fmt: skip
            wait_ready(upstream, setup.upstream_port, processes=2)
            return [count(v, setup, procs) for v in variants for _ in range(repeats)]
        finally:
            errors = procs.stop_all()
            if survivors := procs.survivors():
                errors.append(f"still running after their stop: {survivors}")
            if errors:
                raise StartError("; ".join(errors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variants", default="on,off", help="on, off or both (default on,off)")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted")
    parser.add_argument("--warmup", type=int, default=1000, help="requests before counting")
    parser.add_argument("--connections", type=int, default=10, help="keep-alive connections")
    parser.add_argument("--repeats", type=int, default=3, help="counts per variant (the median)")
    parser.add_argument("--json", type=Path, help="also write the counts here as JSON")
    options = parser.parse_args(argv)
    variants = [v for v in options.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose from on, off")
    counts = run(variants, options.requests, options.warmup, options.connections, options.repeats)
    rows = [summary(variant, [c for c in counts if c.variant == variant]) for variant in variants]
    for row in rows:
        print(f"{row['variant']}: {row['per_request']:,} instructions per request (median of "
              f"{len(row['runs'])}: {min(row['runs']):,}-{max(row['runs']):,}; "
              f"{row['requests']} requests each; {row['errors']} failed, "
              "warm-ups included)")  # fmt: skip
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(c.errors for c in counts) else 0


def summary(variant: str, counts: list[Count]) -> dict:
    """A variant's counts: the median per request, each run's, the failures."""
    runs = [c.per_request for c in counts]
    return {
        "variant": variant,
        "per_request": round(statistics.median(runs)),
        "runs": runs,
        "requests": counts[0].requests,
        "errors": sum(c.errors for c in counts),
    }


if __name__ == "__main__":
    sys.exit(main())
