"""The run: plan the cases, start each peer once, load it with wrk, measure, stop.

One session per peer: start it, wait until a request through it returns the
1 KiB body (for the websocket section: until a message through it comes back),
check that it proxies correctly (check_peer), run its cases back to back, stop
it by PID. Each case is a warm-up run (discarded), then the measured run (wrk;
h2load for the tls section's HTTP/2 case; bench/wsload.py for the websocket
section), with the peer's CPU ticks read just before and just after it (each
worker's too, for the split between them), its memory sampled every 0.5 s
while it runs, and near its end which worker holds each client connection and
how many bytes came in on it (worker_split).

Then the repeat rounds: the main section's 100-connection point again, peer
after peer, in the same order, each peer started afresh (plan_repeats).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench import hostspeed, load, micro, peers, report, tls, wsload
from bench.peers import BENCH_DOMAIN, BODIES, PEERS, Peer
from devkit.lbproxy import compile_image_bytecode
from devkit.processes import (
    CLOCK_TICKS,
    Registry,
    Spawned,
    StartError,
    children,
    cpu_ticks,
    cpu_ticks_each,
    free_port,
    memory_kib,
    system_busy_ticks,
    wait_for_port,
    wait_until,
)

REPO = peers.REPO
INSTALL = REPO / "scripts" / "install" / "bench.sh"
SECTIONS = (
    "main",
    "bodies",
    "concurrency",
    "domains",
    "micro",
    "tls",
    "websocket",
    "ratelimit",
    "prometheus",
)
MAIN_CONNECTIONS = (1, 100, 400)
SWEEP_CONNECTIONS = (1, 10, 100, 400, 1000)
SWEEP_PEERS = ("haproxy", "lbproxy-2w")
BODY_PEERS = ("direct", "haproxy", "lbproxy-2w")
# Order of the sessions: the figures issue 9's targets compare (direct, HAProxy,
# lbproxy 2 workers on) first, while the retry budget lasts; on/off and 3/10,000
# domains next to each other. Issue 22's (lbproxy and the asyncio peers) are the
# only ones retried for a slow host (Runner.measure_quietly), so its budget is
# theirs whatever their place.
ORDER = (
    "direct",
    "haproxy",
    "lbproxy-2w",
    "lbproxy-2w-10k",
    "lbproxy-2w-off",
    "aiohttp",
    "uvicorn",
    "granian",
    "lbproxy-2w-limit-local",
    "lbproxy-2w-limit-global",
    "lbproxy-2w-noprom",
    "lbproxy",
    "lbproxy-1w",
    "lbproxy-1w-off",
    "nginx",
    "proxypy",
    "mitmdump",
    "haproxy-tls",
    "lbproxy-2w-tls",
    "ws-direct",
    "ws-lbproxy-2w",
    "ws-nginx",
)
FULL_PEERS = ORDER
SMOKE_PEERS = ("direct", "haproxy", "nginx", "lbproxy-2w", "lbproxy-2w-off")
ASYNCIO_PEERS = report.ASYNCIO_PEERS
QUIET_PCT = report.QUIET_PCT  # "quiet": other processes use less than this % of the machine
HOST_WAIT_S = 15  # a full run waits up to this long for a fast host before each case
COMPARED_EXTRA_RETRIES = report.COMPARED_EXTRA_RETRIES
REPEAT_CONNECTIONS = 100  # the main section's point measured `repeats` times


@dataclass
class Options:
    smoke: bool = False
    duration: int = 4
    warmup: int = 1
    peers: tuple[str, ...] = FULL_PEERS
    connections: tuple[int, ...] = MAIN_CONNECTIONS
    sections: tuple[str, ...] = SECTIONS
    out: Path = REPO / "bench" / "out"
    install: bool = True
    results: bool | None = None  # write bench/RESULTS.md; None: on a full run only
    wait_quiet: int = 0
    busy_retries: int = 0  # measure a case again when others used >= QUIET_PCT of the CPU
    retry_wait: int = 60  # before each retry, wait up to this long for a quiet machine
    budget: int = 1200  # seconds: no more waiting or retrying past this (the run completes)
    on_env: dict[str, str] = field(default_factory=dict)
    off_env: dict[str, str] = field(default_factory=dict)
    keep: bool = False
    argv: list[str] = field(default_factory=list)
    repeats: int = 3  # times the main section's 100-connection point is measured
    check: bool = False  # start each peer and check it proxies correctly; measure nothing

    @property
    def full(self) -> bool:
        return (
            not self.smoke
            and set(self.peers) == set(FULL_PEERS)
            and set(self.sections) == set(SECTIONS)
            and tuple(self.connections) == MAIN_CONNECTIONS
        )


@dataclass(frozen=True)
class Case:
    section: str
    connections: int
    path: str = "/1k"
    tls: str | None = None  # the tls section's case: a key of tls.CASES
    repeat: int = 0  # which measurement of a repeated point (1, 2, ...); 0: not repeated

    @property
    def name(self) -> str:
        section = f"{self.section}-{self.tls}" if self.tls else self.section
        again = f"#{self.repeat}" if self.repeat else ""
        return f"{section}:{self.path}@{self.connections}{again}"


# The websocket section (docs/bench.md#websocket): 1 connection (round-trip latency),
# then WS_CONNECTIONS (throughput), 32-byte messages, one in flight per connection.
WS_CONNECTIONS = (1, 50)
WS_PATH = "/"  # the WebSocket request's target (the echo answers any)


def ws_cases() -> list[Case]:
    """The websocket section's cases of one peer, in run order."""
    return [Case("websocket", c, WS_PATH) for c in WS_CONNECTIONS]


def tls_cases() -> list[Case]:
    """The tls section's cases of one peer, in run order."""
    cases = [Case("tls", c, tls=kind) for kind in ("h1", "h2") for c in tls.CONNECTIONS]
    return [*cases, Case("tls", tls.HANDSHAKE_CONNECTIONS, tls="handshake")]


def plan(options: Options) -> list[tuple[Peer, list[Case]]]:
    """The sessions in run order, each with its cases in run order.

    Within a session: the main cases up to 100 connections, then the larger
    bodies at 100 (so memory per body size is read before the 400/1000
    connection runs raise it), then the higher connection counts.
    """
    if options.check:
        return check_plan(options)
    sections = set(options.sections)
    sessions = []
    for name in ORDER:
        if name not in options.peers:
            continue
        peer = PEERS[name]
        if peer.tls:  # the tls section's peers run its cases only
            if "tls" in sections:
                sessions.append((peer, tls_cases()))
            continue
        if peer.ws:  # and the websocket section's, its cases
            if "websocket" in sections:
                sessions.append((peer, ws_cases()))
            continue
        if peer.limit:  # and the ratelimit section's, against lbproxy-2w's ratelimit case
            if "ratelimit" in sections:
                sessions.append((peer, [Case("ratelimit", 100)]))
            continue
        if not peer.prometheus:  # and the prometheus section's, against lbproxy-2w's
            if "prometheus" in sections:
                sessions.append((peer, [Case("prometheus", 100)]))
            continue
        main = (
            sorted(options.connections) if "main" in sections and name != "lbproxy-2w-10k" else []
        )
        first = 1 if options.repeats > 1 else 0
        low = [
            Case("main", c, repeat=first if c == REPEAT_CONNECTIONS else 0)
            for c in main
            if c <= 100
        ]
        high = [Case("main", c) for c in main if c > 100]
        bodies = []
        if "bodies" in sections and name in BODY_PEERS:
            if 100 not in main:
                bodies.append(Case("bodies", 100, "/1k"))
            bodies += [Case("bodies", 100, path) for path in ("/100k", "/1m")]
        sweep = []
        if "concurrency" in sections and name in SWEEP_PEERS:
            sweep = [Case("concurrency", c) for c in SWEEP_CONNECTIONS if c not in main]
        domains = []
        if "domains" in sections and name in ("lbproxy-2w", "lbproxy-2w-10k"):
            domains = [Case("domains", 100)]
        if "ratelimit" in sections and name == "lbproxy-2w":
            domains.append(Case("ratelimit", 100))  # the no-limit baseline, same run
        if "prometheus" in sections and name == "lbproxy-2w":
            domains.append(Case("prometheus", 100))  # /metrics on, same run
        cases = low + bodies + high + sweep + domains
        if cases:
            sessions.append((peer, cases))
    return sessions


def plan_repeats(options: Options) -> list[list[tuple[Peer, list[Case]]]]:
    """The repeat rounds after the sessions: in each, every peer whose session has
    the repeated point measures it once more, in the sessions' order (A, B, C, A,
    B, C...), so that a busy spell of the machine falls on every peer alike."""
    repeated = [
        (peer, case)
        for peer, cases in plan(options)
        for case in cases
        if case.section == "main" and case.repeat == 1
    ]
    if not repeated:
        return []
    return [
        [(peer, [replace(case, repeat=number)]) for peer, case in repeated]
        for number in range(2, options.repeats + 1)
    ]


def check_plan(options: Options) -> list[tuple[Peer, list[Case]]]:
    """--check: every chosen proxy of the main section, with no case."""
    return [
        (PEERS[name], []) for name in ORDER if name in options.peers and is_main_proxy(PEERS[name])
    ]


def is_main_proxy(peer: Peer) -> bool:
    """A proxy in front of the plain upstream: the correctness check applies."""
    return peer.kind != "direct" and not (peer.tls or peer.ws)


def estimate_seconds(options: Options) -> float:
    sessions = plan(options) + [s for each in plan_repeats(options) for s in each]
    cases = sum(len(cases) for _, cases in sessions)
    # A TLS session also makes the certificate (once) and probes the peer: about 1 s.
    extra = sum(1.0 for peer, _ in sessions if peer.tls)
    # The websocket section: the echo upstream starts once (about 1 s); each run of
    # the load client waits wsload.START_DELAY_S for its connections before its window.
    ws_runs = sum(len(cases) for peer, cases in sessions if peer.ws) * 2
    if ws_runs:
        extra += 1.0 + ws_runs * wsload.START_DELAY_S
    extra += hostspeed.CALIBRATE_S
    return cases * (options.duration + options.warmup + 0.6) + len(sessions) * 2.5 + extra + 5


# --- machine ---------------------------------------------------------------


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "os": _os_name(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "loadavg_before": os.getloadavg(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def versions(python_peers: bool, tls_peers: bool = False) -> dict:
    def first_line(args: list[str]) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if done.stdout + done.stderr
            else "?"
        )

    def word(line: str, index: int) -> str:
        words = line.split()
        return words[index] if len(words) > index else line

    found = {
        "wrk": word(first_line(["wrk", "--version"]), 1),  # wrk debian/4.1.0-3+b2 [epoll] ...
        "haproxy": word(first_line(["/usr/sbin/haproxy", "-v"]), 2),  # HAProxy version 2.6...
        "nginx": first_line(["/usr/sbin/nginx", "-v"]).rsplit("/", 1)[-1],  # nginx/1.22.1
    }
    if tls_peers:
        found["h2load"] = word(first_line(["h2load", "--version"]), 1)  # h2load nghttp2/1.52.0
        build = subprocess.run(
            ["/usr/sbin/haproxy", "-vv"], capture_output=True, text=True, timeout=20
        ).stdout
        for line in build.splitlines():  # Running on OpenSSL version : OpenSSL 3.0.17 ...
            if line.startswith("Running on OpenSSL version"):
                found["haproxy OpenSSL"] = line.split(":", 1)[1].split()[1]
        found["python OpenSSL"] = ssl.OPENSSL_VERSION.split()[1]
    for package in ("gunicorn", "gevent", "requests", "urllib3"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    if python_peers:
        python = peers.PEERS_VENV / "bin" / "python"
        code = f"import importlib.metadata as m; print(*(m.version(p) for p in {PEER_PACKAGES}))"
        line = first_line([str(python), "-c", code]).split()
        if len(line) == len(PEER_PACKAGES):
            found.update(zip(PEER_PACKAGES, line, strict=True))
    return found


# The Python peers' packages whose versions a run records (bench/requirements-peers.txt).
PEER_PACKAGES = ("proxy.py", "mitmproxy", "aiohttp", "uvloop", "uvicorn", "httptools", "granian")


def cpu_seconds_self_and_children() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def foreign_load(seconds: float) -> float:
    """CPU used by processes that are not the harness or its children, % of the machine."""
    busy0 = system_busy_ticks()
    mine0 = cpu_seconds_self_and_children()
    start = time.monotonic()
    time.sleep(seconds)
    busy1 = system_busy_ticks()
    elapsed = time.monotonic() - start
    foreign = (busy1 - busy0) / CLOCK_TICKS - (cpu_seconds_self_and_children() - mine0)
    return max(0.0, 100.0 * foreign / (elapsed * (os.cpu_count() or 1)))


def wait_for_quiet(limit: int) -> dict:
    """Sample the machine's other load; wait (up to limit s) until it is below QUIET_PCT."""
    deadline = time.monotonic() + limit
    samples = [round(foreign_load(2.0), 1)]

    def quiet() -> bool:
        # Two samples in a row (5 s) below QUIET_PCT when waiting: load comes in bursts.
        return all(sample < QUIET_PCT for sample in samples[-2:])

    while limit > 0 and time.monotonic() < deadline and not (len(samples) > 1 and quiet()):
        if samples[-1] >= QUIET_PCT:
            print(f"bench: machine busy ({samples[-1]}% CPU used by others), waiting", flush=True)
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        samples.append(round(foreign_load(3.0), 1))
    return {"foreign_cpu_pct_samples": samples[-20:], "quiet": quiet()}


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, 65536))
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        print(f"bench: warning: ulimit -n is {soft}, below the {needed} this run needs")
    return soft


def install(python_peers: bool) -> None:
    args = ["bash", str(INSTALL)] + ([] if python_peers else ["--apt-only"])
    subprocess.run(args, check=True, timeout=900)


PEER_TOOLS = ("proxy", "mitmdump", "uvicorn", "granian", "python")


def check_tools(python_peers: bool, tls_peers: bool = False) -> None:
    needed = [Path("/usr/sbin/haproxy"), Path("/usr/sbin/nginx"), peers.LBPROXY_GUNICORN]
    if python_peers:
        needed += [peers.PEERS_VENV / "bin" / tool for tool in PEER_TOOLS]
    missing = [str(path) for path in needed if not path.exists()]
    for tool in ["wrk"] + (["h2load", "openssl"] if tls_peers else []):
        if not shutil.which(tool):
            missing.append(tool)
    if missing:
        raise SystemExit(
            f"bench: missing {', '.join(missing)}: run scripts/install/bench.sh "
            "(and scripts/setup for .venv), or drop --no-install"
        )


# --- the run ---------------------------------------------------------------


def fetch(
    port: int, path: str = "/1k", timeout: float = 2.0, context: ssl.SSLContext | None = None
) -> tuple[int, int]:
    """GET path with the bench Host; over TLS with context (verifying the bench certificate)."""
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    else:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=context
        )
    try:
        connection.request("GET", path, headers={"Host": BENCH_DOMAIN})
        response = connection.getresponse()
        return response.status, len(response.read())
    finally:
        connection.close()


def wait_ws_ready(process: Spawned, port: int, processes: int = 1, timeout: float = 60.0):
    """Until a WebSocket message through port comes back and the processes are up."""

    def ready() -> bool:
        return wsload.probe(port, timeout=1.0) and len(process.tree()) >= processes

    if not wait_until(ready, process, timeout, f"a WebSocket echo on port {port}", interval=0.1):
        raise StartError(
            f"{process.name}: no WebSocket echo in {timeout:.0f} s", process.log_tail()
        )


def wait_ready(
    process: Spawned,
    port: int,
    processes: int = 1,
    timeout: float = 60.0,
    context: ssl.SSLContext | None = None,
):
    """Until a request through the peer returns the 1 KiB body and its processes are up."""
    last = ""

    def ready() -> bool:
        nonlocal last
        try:
            status, size = fetch(port, context=context)
        except (OSError, http.client.HTTPException) as error:
            last = str(error)
            return False
        last = f"HTTP {status}, {size} bytes"
        return status == 200 and size == BODIES["/1k"] and len(process.tree()) >= processes

    if not wait_until(ready, process, timeout, f"the 1 KiB body on port {port}", interval=0.1):
        raise StartError(
            f"{process.name} not ready in {timeout:.0f} s ({last})", process.log_tail()
        )


@dataclass
class Running:
    """What a session started: the peer (or the upstream, for direct) and its helpers."""

    process: Spawned | None = None
    port: int = 0
    sink: Spawned | None = None
    redis: Spawned | None = None


def expected_processes(peer: Peer) -> int:
    """The peer's processes once every worker is up (what wait_ready waits for)."""
    if peer.kind == "lbproxy":
        return 1 + (peer.workers or os.cpu_count() or 1)
    if peer.kind == "nginx":
        return 3
    if peer.kind in peers.ASYNCIO_KINDS:
        return 1 + (peer.workers or peers.ASYNCIO_PROCESSES)
    return 1


# --- the correctness check ---------------------------------------------------------

PROBE_TOKEN = "bench-probe-7f3a"  # the request header the upstream echoes back
PROBE_QUERY = "q=bench&x=%2F1"  # the query it echoes back (as nginx's $args)


def request(port: int, method: str, target: str, headers: dict, body: bytes | None = None):
    """One request with the bench Host: (status, [(lowercased name, value)], body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        connection.request(method, target, body=body, headers={"Host": BENCH_DOMAIN, **headers})
        response = connection.getresponse()
        fields = [(name.lower(), value) for name, value in response.getheaders()]
        return response.status, fields, response.read()
    finally:
        connection.close()


def check_peer(port: int) -> dict:
    """Whether a proxy passes the upstream's probe (peers.PROBE_PATH) through intact.

    GET: status 200; the body byte for byte (every byte value); one Content-Length
    of 1024 and no chunking; the upstream's own Content-Type; X-Bench-Echo, the
    upstream's echo of the request's X-Bench-Probe (the request header reached
    it, and a response header of its came back); X-Bench-Args, its echo of the
    query. POST with a body: nginx's 405 for a static file (the method reached it).
    Returns {"problems": [...]} (empty: passed) and what was seen.
    """
    target = f"{peers.PROBE_PATH}?{PROBE_QUERY}"
    try:
        status, fields, body = request(port, "GET", target, {"X-Bench-Probe": PROBE_TOKEN})
        post, _, _ = request(port, "POST", target, {"Content-Type": "text/plain"}, b"p" * 64)
    except (OSError, http.client.HTTPException) as error:
        return {"problems": [f"{type(error).__name__}: {error}"]}
    seen = {name: [v for n, v in fields if n == name] for name, _ in fields}
    want = {
        "content-length": [str(len(peers.PROBE_BODY))],
        "content-type": [peers.PROBE_TYPE],
        "x-bench-echo": [PROBE_TOKEN],
        "x-bench-args": [PROBE_QUERY],
    }
    problems = [f"GET status {status}"] if status != 200 else []
    if body != peers.PROBE_BODY:
        same = len(body) == len(peers.PROBE_BODY)
        problems.append(f"body: {len(body)} bytes{', not the same bytes' if same else ''}")
    problems += [
        f"{name}: {seen.get(name, [])} (want {value})"
        for name, value in want.items()
        if seen.get(name, []) != value
    ]
    if "transfer-encoding" in seen:
        problems.append(f"transfer-encoding: {seen['transfer-encoding']}")
    if post != 405:
        problems.append(f"POST status {post} (want the upstream's 405)")
    return {"problems": problems, "status": status, "post_status": post, "body_bytes": len(body),
            "headers": {name: seen.get(name) for name in want}}  # fmt: skip


def off_seen(log: Path) -> dict:
    """What an "off" variant wrote to its output: JSON access-log lines (want none)."""
    lines = 0
    with contextlib.suppress(OSError), open(log, errors="replace") as out:
        for line in out:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    lines += isinstance(entry, dict) and "status" in entry
    return {"access_log_lines": lines}


# --- the split between workers ------------------------------------------------------

HELPERS = (b"resource_tracker",)  # multiprocessing's helper next to uvicorn's workers


def worker_pids(process: Spawned) -> list[int]:
    """The peer's workers (its root's children, helpers left out) when there are two
    or more: the processes whose split is reported."""

    def helper(pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True
        return any(name in cmdline for name in HELPERS)

    found = sorted(pid for pid in children(process.pid) if not helper(pid))
    return found if len(found) >= 2 else []


def accepted_sockets(port: int) -> dict[str, int] | None:
    """Socket inode -> bytes received, of each established connection to port (ss)."""
    args = ["ss", "-Htien", "state", "established", "sport", "=", f":{port}"]
    try:
        output = subprocess.run(args, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_ss(output)


def parse_ss(output: str) -> dict[str, int]:
    """`ss -tie` output: socket inode -> bytes received (0 when ss shows none)."""
    found: dict[str, int] = {}
    inode = None
    for word in output.split():  # a socket's line has ino:, the line after it bytes_received:
        if word.startswith("ino:"):
            inode = word[4:]
            found[inode] = 0
        elif word.startswith("bytes_received:") and inode is not None:
            found[inode] = int(word.split(":", 1)[1])
    return found


def socket_owners(pids: list[int]) -> dict[str, int]:
    """Socket inode -> which of pids holds it open."""
    owners = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for entry in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(entry.path)
                    if link.startswith("socket:["):
                        owners[link[8:-1]] = pid
    return owners


def connections_by_worker(port: int, pids: list[int]) -> dict[int | None, tuple[int, int]] | None:
    """Per worker: (client connections it holds, bytes received on them); under None,
    the connections no worker holds (established, still in the listen queue)."""
    sockets = accepted_sockets(port)
    if sockets is None:
        return None
    owners = socket_owners(pids)
    counts: dict[int | None, tuple[int, int]] = dict.fromkeys([*pids, None], (0, 0))
    for inode, received in sockets.items():
        pid = owners.get(inode)
        connections, total = counts[pid]
        counts[pid] = (connections + 1, total + received)
    return counts


def fuller(new: dict | None, old: dict | None) -> dict | None:
    """Of two samples, the one that saw more client connections (the later when
    equal): a sample read as wrk closes its connections sees none."""
    if new is None or old is None:
        return new or old
    return new if sum(c for c, _ in new.values()) >= sum(c for c, _ in old.values()) else old


def split_text(values: list[float] | None) -> str:
    """Shares in %, largest first: "52/48"; "–" when there is nothing to split."""
    total = sum(values or ())
    if not values or total <= 0:
        return "–"
    return "/".join(f"{100 * value / total:.0f}" for value in sorted(values, reverse=True))


def worker_split(
    pids: list[int], ticks: tuple[dict, dict], sample: dict | None, requests: int
) -> dict | None:
    """Each worker's CPU in the measured window, its client connections and the bytes
    they sent it (every request of a case is the same size, so its share of the
    bytes is its share of the requests), the connections no worker had accepted,
    and the splits as text."""
    if not pids:
        return None
    before, after = ticks
    cpu = [(after.get(pid, 0) - before.get(pid, 0)) / CLOCK_TICKS for pid in pids]
    connections = [sample[pid][0] for pid in pids] if sample else None
    received = [sample[pid][1] for pid in pids] if sample else None
    total = sum(received or ())
    return {
        "pids": pids,
        "cpu_s": cpu,
        "connections": connections,
        "unaccepted": sample.get(None, (0, 0))[0] if sample else None,
        "bytes_in": received,
        "requests": [round(requests * r / total) for r in received] if total else None,
        "cpu_split": split_text(cpu),
        "requests_split": split_text(received),
        "connections_split": split_text(connections),
    }


class Runner:
    def __init__(self, options: Options):
        self.options = options
        self.procs = Registry(timeout=5.0)
        self.tmp = Path(tempfile.mkdtemp(prefix="lbproxy-bench-"))
        self.tmp.chmod(0o755)
        self.upstream: Spawned | None = None
        self.upstream_port = 0
        self.upstream_notes: dict = {}
        self.rows: list[dict] = []
        self.sessions: list[dict] = []
        self.deadline = time.monotonic() + options.budget
        self.tls_files: tls.Files | None = None  # made by the first TLS session
        self.echo: Spawned | None = None  # the WebSocket echo upstream: the first ws session's
        self.echo_port = 0
        # Every sample of the host's speed in this run (bench/hostspeed.py): the
        # calibration's, then each measured run's, retried attempts included.
        self.host_samples: list[float] = []

    def calibrate_host(self) -> None:
        self.host_samples += hostspeed.sample_for(hostspeed.CALIBRATE_S)

    def host_reference_ms(self) -> float:
        return hostspeed.reference(self.host_samples)

    def certificate(self) -> tls.Files:
        if self.tls_files is None:
            self.tls_files = tls.make_files(self.tmp / "certs", BENCH_DOMAIN)
        return self.tls_files

    def start_echo(self) -> Spawned:
        """The websocket section's upstream (tests/ws_upstream.py), once per run."""
        if self.echo is None:
            self.echo_port = free_port()
            launch = peers.ws_echo(self.echo_port)
            self.echo = self.procs.start(
                "ws-echo", launch.args, self.tmp / "ws-echo.log",
                env=launch.env, cwd=launch.cwd, stop_signal=launch.stop_signal,
            )  # fmt: skip
            wait_ws_ready(self.echo, self.echo_port)
            self.upstream_notes["ws_echo_command"] = launch.command()
            self.log(f"WebSocket echo upstream on 127.0.0.1:{self.echo_port}")
        return self.echo

    def upstream_of(self, case: Case) -> Spawned:
        """The upstream a case goes through: the WebSocket echo for the websocket section."""
        upstream = self.echo if case.section == "websocket" else self.upstream
        assert upstream is not None
        return upstream

    def log(self, message: str) -> None:
        print(f"bench: {message}", flush=True)

    def start_upstream(self) -> None:
        self.upstream_port = free_port()
        launch = peers.upstream(self.tmp / "upstream", self.upstream_port)
        self.upstream = self.procs.start(
            "upstream",
            launch.args,
            self.tmp / "upstream.log",
            env=launch.env,
            stop_signal=launch.stop_signal,
        )
        self.upstream_notes = {"command": launch.command(), **launch.notes}
        wait_ready(self.upstream, self.upstream_port, processes=2)
        for path, size in BODIES.items():
            status, got = fetch(self.upstream_port, path)
            if (status, got) != (200, size):
                raise StartError(f"upstream {path}: HTTP {status}, {got} bytes (want {size})")
        # The check every proxy must pass: the upstream itself passes it first.
        self.upstream_notes["check"] = check_peer(self.upstream_port)
        if problems := self.upstream_notes["check"]["problems"]:
            raise StartError(f"upstream: the correctness probe fails: {'; '.join(problems)}")
        self.log(f"upstream nginx on 127.0.0.1:{self.upstream_port}")

    def run_session(self, peer: Peer, cases: list[Case], repeat: int = 0) -> None:
        """Start the peer, check it, measure its cases, stop it.

        repeat > 1: a repeat round's run of the peer, kept in its session's
        ``repeat_runs`` (skipped when its session failed to start).
        """
        if repeat > 1:
            session = next((s for s in self.sessions if s["peer"] == peer.name), None)
            if session is None or session.get("error"):
                return
            record: dict = {"repeat": repeat}
            session.setdefault("repeat_runs", []).append(record)
            home = self.tmp / f"{peer.name}-{repeat}"
        else:
            session = record = {"peer": peer.name, "label": peer.label, "kind": peer.kind}
            self.sessions.append(session)
            home = self.tmp / peer.name
        running = Running()
        try:
            self.start_peer(peer, home, record, running)
            self.log(f"{peer.label}: {record['command']}")
            for case in cases:
                self.run_case(peer, case, running, session)
        except StartError as error:
            record["error"] = str(error)
            self.log(f"{peer.label}: FAILED: {error}")
        finally:
            self.stop_peer(peer, home, record, running)

    def start_peer(self, peer: Peer, home: Path, record: dict, running: Running) -> None:
        """Start the peer (and its sink, its Redis), wait until it serves, check it."""
        if peer.ws:
            self.start_echo()
        if peer.kind == "direct" and peer.ws:
            running.port, running.process = self.echo_port, self.echo
            record["command"] = "(no proxy: bench/wsload.py to the WebSocket echo upstream)"
            return
        if peer.kind == "direct":
            running.port, running.process = self.upstream_port, self.upstream
            record["command"] = "(no proxy: wrk to the upstream nginx)"
            return
        running.port = port = free_port()
        extra = {
            "admin_port": free_port(),
            "statsd_port": free_port(),
            "on_env": self.options.on_env,
            "off_env": self.options.off_env,
        }
        if peer.tls:
            extra["tls"] = self.certificate()
        if peer.limit == "global":
            if not Path(peers.redis_args(0)[0]).exists():
                raise StartError("redis-server is not installed (scripts/install/redis.sh)")
            extra["redis_port"] = free_port()
            running.redis = self.procs.start(
                "redis", peers.redis_args(extra["redis_port"]), self.tmp / "redis.log"
            )
            wait_for_port(extra["redis_port"], running.redis)
        target = self.echo_port if peer.ws else self.upstream_port
        launch = peers.launch(peer, home, port, target, extra)
        record["command"] = launch.command()
        record["notes"] = launch.notes
        if peer.kind == "lbproxy" and peer.features:
            running.sink = self.procs.start(
                "statsd-sink",
                peers.sink_args(extra["statsd_port"], home / "statsd.json"),
                home / "sink.log",
                cwd=REPO,
            )
        started = time.monotonic()
        running.process = process = self.procs.start(
            peer.name, launch.args, self.tmp / f"{peer.name}.log",
            env=launch.env, cwd=launch.cwd, stop_signal=launch.stop_signal,
        )  # fmt: skip
        context = tls.client_context(extra["tls"].ca) if peer.tls else None
        if peer.ws:
            wait_ws_ready(process, port, expected_processes(peer))
        else:
            wait_ready(process, port, expected_processes(peer), context=context)
        record["start_s"] = round(time.monotonic() - started, 2)
        record["processes"] = len(process.tree())
        if peer.tls:
            try:
                record["tls"] = tls.probe(port, extra["tls"].ca, BENCH_DOMAIN)
            except OSError as error:  # ssl.SSLError too: note it, measure anyway
                record["tls"] = {"error": f"{type(error).__name__}: {error}"}
        if is_main_proxy(peer):
            record["check"] = check_peer(port)
            if record["check"]["problems"]:
                problems = "; ".join(record["check"]["problems"])
                raise StartError(f"{peer.name} failed the correctness check: {problems}")

    def stop_peer(self, peer: Peer, home: Path, record: dict, running: Running) -> None:
        if running.process is not None and running.process not in (self.upstream, self.echo):
            self.procs.stop(running.process)
        if running.sink is not None:
            self.procs.stop(running.sink)
            record["features"] = features_seen(home, peer)
        if running.redis is not None:
            self.procs.stop(running.redis)
        if peer.kind == "lbproxy" and not peer.features and running.process is not None:
            record["off_seen"] = off_seen(self.tmp / f"{peer.name}.log")

    def run_case(self, peer: Peer, case: Case, running: Running, session: dict) -> None:
        try:
            row = self.measure_quietly(peer, running.process, running.port, case, running.sink)
        except (ValueError, OSError, subprocess.SubprocessError) as error:
            # wrk failed (no report line): note it, go on with the next case.
            text = f"{case.name}: {error}"
            session.setdefault("case_errors", []).append(text)
            self.log(f"  FAILED {text}")
            return
        self.rows.append(row)
        cpu = row["cpu_us_per_req"] or 0.0
        section = f"{case.section}-{case.tls}" if case.tls else case.section
        again = f" #{case.repeat}" if case.repeat else ""
        split = row.get("workers") or {}
        shown = f"  split {split['requests_split']} (CPU {split['cpu_split']})" if split else ""
        self.log(
            f"  {section:<13} {case.path:>5} c={case.connections:<4} "
            f"{row['rps']:>9.0f} req/s  p50 {row['latency_us']['p50'] / 1000:.2f} ms  "
            f"p99 {row['latency_us']['p99'] / 1000:.2f} ms  cpu {cpu:.0f} us/req  "
            f"rss {row['rss_kib'] / 1024:.0f} MiB  err {row['errors_total']}"
            f"+{row['errors']['timeout']}t{shown}{again}"
        )

    def measure_quietly(self, peer, process, port, case: Case, sink) -> dict:
        """Measure; measure again if other processes took >= QUIET_PCT of the CPU
        or, for a run issue 22's targets compare (report.compared), if the host
        slowed the VM (hostspeed.slowed).

        Keeps the least disturbed attempt; bounded by busy_retries (plus
        COMPARED_EXTRA_RETRIES for a compared run), retry_wait and the run's
        budget. Other runs record the host's speed but are not measured again
        for it: on a host slow half the time, that would spend the budget
        before the compared runs came.
        """
        options = self.options
        watch_host = bool(options.busy_retries) and report.compared(case.section, peer.name)
        retries = options.busy_retries + (COMPARED_EXTRA_RETRIES if watch_host else 0)
        row = self.measure(peer, process, port, case, sink, wait_for_host=watch_host)
        attempts = [row]
        while (
            report.disturbed(row, watch_host)
            and len(attempts) <= retries
            and time.monotonic() < self.deadline
        ):
            last = attempts[-1]
            if last["foreign_cpu_pct"] >= QUIET_PCT:
                self.log(f"  busy ({last['foreign_cpu_pct']}% CPU used by others): measuring again")
                wait_for_quiet(int(min(options.retry_wait, self.time_left())))
            else:
                self.log(f"  host slowed {last['host_slow_pct']}% of samples: measuring again")
            attempts.append(self.measure(peer, process, port, case, sink, wait_for_host=watch_host))
            row = min(attempts, key=lambda attempt: disturbance(attempt, watch_host))
        row["attempts_foreign_cpu_pct"] = [each["foreign_cpu_pct"] for each in attempts]
        # Each attempt's samples: the report judges them all against the final reference.
        row["attempts_host_ms"] = [each["host_ms"] for each in attempts]
        row["attempts_host_slow_pct"] = [each["host_slow_pct"] for each in attempts]
        return row

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def wait_for_fast_host(self) -> None:
        """Up to HOST_WAIT_S (within the budget) for the host to be fast again."""
        limit = min(HOST_WAIT_S, self.time_left())
        if self.host_samples and limit > 0:
            hostspeed.wait_until_fast(self.host_reference_ms(), limit)

    def judge_host(self, row: dict) -> None:
        """Keep the run's samples; its slow share against the reference so far."""
        self.host_samples += row["host_ms"]
        row["host_slow_pct"] = hostspeed.slow_pct(row["host_ms"], self.host_reference_ms())

    def measure(self, peer, process, port, case: Case, sink, wait_for_host=False) -> dict:
        """One measured run (after the warm-up, and wait_for_host: a fast host)."""
        options = self.options
        upstream = self.upstream_of(case)
        if options.warmup > 0:
            self.drive(self.load_spec(case, port, options.warmup))
        if wait_for_host:
            self.wait_for_fast_host()
        is_direct = process is upstream
        pids = process.tree()
        up_pids = upstream.tree()
        sink_pids = sink.tree() if sink else []
        workers = worker_pids(process)
        workers0 = cpu_ticks_each(workers)
        cpu0 = cpu_ticks(pids)
        up0 = cpu_ticks(up_pids)
        sink0 = cpu_ticks(sink_pids)
        busy0 = system_busy_ticks()
        mine0 = cpu_seconds_self_and_children()
        started = time.monotonic()
        spec = self.load_spec(case, port, options.duration)
        wrk = load.start(spec, self.tmp / f"{spec.tool}.log")
        host = hostspeed.Monitor().start()  # stopped in the finally below
        rss = pss = peak = 0
        count = len(pids)
        split = None
        late = started + split_offset(spec)
        try:
            deadline = started + options.duration + 20 + wsload.START_DELAY_S
            while wrk.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    wrk.wait(0.5)
                if wrk.poll() is None:
                    pids = process.tree()
                    rss, pss = memory_kib(pids)
                    peak = max(peak, rss)
                    count = len(pids)
                    if workers and time.monotonic() >= late:
                        split = fuller(connections_by_worker(port, workers), split)
            output, _ = wrk.communicate(timeout=5)
        finally:
            if wrk.poll() is None:
                os.kill(wrk.pid, signal.SIGKILL)
                wrk.wait()
            host_ms = host.stop()
        elapsed = time.monotonic() - started
        workers1 = cpu_ticks_each(workers)
        cpu = (cpu_ticks(process.tree()) - cpu0) / CLOCK_TICKS
        up_cpu = (cpu_ticks(upstream.tree()) - up0) / CLOCK_TICKS
        sink_cpu = (cpu_ticks(sink_pids) - sink0) / CLOCK_TICKS
        busy = (system_busy_ticks() - busy0) / CLOCK_TICKS
        mine = cpu_seconds_self_and_children() - mine0
        foreign = busy - mine - (0 if is_direct else cpu) - up_cpu - sink_cpu
        result = spec.parse(output)
        if not rss:  # a very short run: sample once now
            rss, pss = memory_kib(process.tree())
            peak = rss
        requests = result["requests"]
        errors = result["errors"]
        row = {
            "section": case.section,
            "repeat": case.repeat or None,
            "peer": peer.name,
            "label": peer.label,
            "connections": case.connections,
            "path": case.path,
            "tls_case": case.tls,
            "tool": spec.tool,
            "load_command": shlex.join(spec.args()),
            "body_bytes": wsload.MESSAGE_BYTES
            if case.section == "websocket"
            else BODIES[case.path],
            "duration_s": options.duration,
            **result,
            "errors_total": errors["status"] + errors["connect"] + errors["read"] + errors["write"],
            "cpu_s": round(cpu, 3),
            "cpu_us_per_req": cpu * 1e6 / requests if requests else None,
            "cpu_is_upstream": is_direct,
            "upstream_cpu_us_per_req": up_cpu * 1e6 / requests if requests else None,
            "rss_kib": rss,
            "pss_kib": pss,
            "rss_kib_peak": peak,
            "processes": count,
            "elapsed_s": round(elapsed, 2),
            "foreign_cpu_pct": round(
                max(0.0, 100 * foreign / (elapsed * (os.cpu_count() or 1))), 1
            ),
            "host_ms": host_ms,
        }
        if case.tls == "handshake":  # every request on a new connection: one handshake each
            row["handshakes_per_s"] = row["rps"]
        row["workers"] = worker_split(workers, (workers0, workers1), split, requests)
        self.judge_host(row)
        return row

    def load_spec(self, case: Case, port: int, seconds: int) -> load.Spec:
        return load_spec(case, port, seconds, self.tmp / "h2load.tsv")

    def drive(self, spec: load.Spec) -> dict:
        """Run the load tool once (a warm-up) and parse its result."""
        process = load.start(spec, self.tmp / f"{spec.tool}.log")
        try:
            output, _ = process.communicate(timeout=spec.seconds + 20 + wsload.START_DELAY_S)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        return spec.parse(output)


def disturbance(row: dict, host: bool = True) -> float:
    """How far past its limit the worse of the two disturbances went (< 1: neither);
    without ``host``, the others' CPU only."""
    slow = (row["host_slow_pct"] or 0.0) / (100 * hostspeed.SLOW_SHARE) if host else 0.0
    return max(row["foreign_cpu_pct"] / QUIET_PCT, slow)


def split_offset(spec: load.Spec) -> float:
    """When, into a measured run, to read which worker holds each client connection:
    in its last second. wrk's connections are all open by then and still are;
    reading costs CPU, so not earlier. wsload's window opens START_DELAY_S late."""
    delay = wsload.START_DELAY_S if spec.tool == "wsload" else 0.0
    return spec.seconds - 1.0 + delay


def load_spec(case: Case, port: int, seconds: int, h2_log: Path) -> load.Spec:
    """wrk for a case (https for the tls section), h2load for its HTTP/2 case, or
    bench/wsload.py for the websocket section."""
    if case.section == "websocket":
        return load.WsLoad(port, case.connections, seconds)
    if case.tls == "h2":
        return load.H2Load(port, case.path, case.connections, seconds, h2_log)
    if case.tls:
        close = case.tls == "handshake"
        return load.Load(port, case.path, case.connections, seconds, scheme="https", close=close)
    return load.Load(port, case.path, case.connections, seconds)


def features_seen(home: Path, peer: Peer) -> dict:
    """Whether the "on" variant really emitted metrics and wrote a (JSON) access log."""
    seen: dict = {"statsd_datagrams": None, "access_log_lines": 0, "access_log_json": False}
    with contextlib.suppress(OSError, ValueError):
        counts = json.loads((home / "statsd.json").read_text())
        seen["statsd_datagrams"] = counts["datagrams"]
        seen["statsd_sample"] = counts["sample"][:3]
    with contextlib.suppress(OSError):
        with open(home / "access.log", errors="replace") as log:
            first = log.readline()
            seen["access_log_lines"] = (1 if first else 0) + sum(1 for _ in log)
        seen["access_log_sample"] = first.strip()[:300]
        with contextlib.suppress(ValueError):
            seen["access_log_json"] = isinstance(json.loads(first), dict)
    seen["metrics"] = bool(seen["statsd_datagrams"])
    seen["realised"] = seen["metrics"] and seen["access_log_json"]
    return seen


def lbproxy_bytecode() -> dict:
    """lbproxy runs as its image does, from level-2 bytecode compiled here first."""
    started = time.monotonic()
    failed = compile_image_bytecode(peers.LBPROXY_GUNICORN.with_name("python"))
    seconds = round(time.monotonic() - started, 1)
    return {"complete": not failed, "failed": failed, "seconds": seconds}


def run(options: Options) -> dict:
    sessions = plan(options)
    python_peers = any(peer.python for peer, _ in sessions)
    tls_peers = any(peer.tls for peer, _ in sessions)
    if options.install:
        install(python_peers)
    check_tools(python_peers, tls_peers)
    most = max((c.connections for _, cases in sessions for c in cases), default=1)
    nofile = raise_nofile(2 * most + 256)
    data: dict = {
        "schema": 1,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "bench " + " ".join(options.argv),
        "mode": "smoke" if options.smoke else ("full" if options.full else "partial"),
        "options": {
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "peers": list(options.peers),
            "connections": list(options.connections),
            "sections": list(options.sections),
            "wrk": "-t2 (-t1 at 1 connection), --timeout 2s, keep-alive, Host: " + BENCH_DOMAIN,
            **(
                {
                    "tls_load": "wrk https:// (keep-alive; Connection: close for the handshake "
                    "case), h2load -m1 -D (-t2, -t1 at 1 connection) with :authority: "
                    + BENCH_DOMAIN
                    + "; ECDSA P-256 certificate, ALPN "
                    + ",".join(tls.ALPN)
                }
                if tls_peers
                else {}
            ),
            "wait_quiet_s": options.wait_quiet,
            "busy_retries": options.busy_retries,
            "retry_wait_s": options.retry_wait,
            "budget_s": options.budget,
            "repeats": options.repeats,
            "repeat_connections": REPEAT_CONNECTIONS,
        },
        "machine": machine() | {"nofile_limit": nofile},
        "versions": versions(python_peers, tls_peers),
    }
    if any(peer.kind == "lbproxy" for peer, _ in sessions):
        data["lbproxy_bytecode"] = lbproxy_bytecode()  # before the quiet wait: it takes CPU
    data["load_before"] = wait_for_quiet(options.wait_quiet)
    if "micro" in options.sections:
        data["micro"] = micro.measure()
    runner = Runner(options)
    data["tmp"] = str(runner.tmp)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        runner.calibrate_host()
        runner.start_upstream()
        for peer, cases in sessions:
            runner.run_session(peer, cases)
        for number, each in enumerate(plan_repeats(options), start=2):
            runner.log(f"repeat round {number} of {options.repeats}")
            for peer, cases in each:
                runner.run_session(peer, cases, repeat=number)
    except KeyboardInterrupt:
        data["interrupted"] = True
        runner.log("interrupted: stopping every process started")
    except Exception as error:
        data["error"] = f"{type(error).__name__}: {error}"
        runner.log(f"error: {data['error']}")
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for error in runner.procs.stop_all():
                runner.log(error)
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)
        data["host_reference_ms"] = runner.host_reference_ms()
        data["host_sample_count"] = len(runner.host_samples)
        data["elapsed_s"] = round(time.monotonic() - started, 1)
        data["machine"]["loadavg_after"] = os.getloadavg()
        data["results"] = runner.rows
        data["sessions"] = runner.sessions
        data["upstream"] = runner.upstream_notes
        data["processes"] = [
            {"pid": s.pid, "started": s.started, "name": s.name} for s in runner.procs.record
        ]
        data["survivors"] = [s.pid for s in runner.procs.survivors()]
        if options.keep:
            data["kept"] = str(runner.tmp)
        else:
            shutil.rmtree(runner.tmp, ignore_errors=True)
    report.derive(data)
    return data


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def write(data: dict, options: Options) -> dict[str, Path]:
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = "smoke" if options.smoke else "bench"
    paths = {"json": out / f"{prefix}-{stamp}.json", "md": out / f"{prefix}-{stamp}.md"}
    paths["json"].write_text(json.dumps(data, indent=1) + "\n")
    paths["md"].write_text(report.markdown(data))
    for kind, path in list(paths.items()):
        latest = out / f"latest.{kind}"
        shutil.copyfile(path, latest)
    write_results = options.full if options.results is None else options.results
    if write_results and not data.get("interrupted") and not data.get("error"):
        paths["results"] = REPO / "bench" / "RESULTS.md"
        paths["results"].write_text(report.results_md(data))
    return paths


def render(source: Path, options: Options) -> dict[str, Path]:
    """Markdown (and RESULTS.md with --results) again from a run's JSON, with this code."""
    data = json.loads(source.read_text())
    report.derive(data)
    paths = {"md": source.with_suffix(".md")}
    paths["md"].write_text(report.markdown(data))
    if options.results:
        if data.get("mode") != "full" or data.get("interrupted") or data.get("error"):
            raise SystemExit(f"bench: {source} is not a complete full run: RESULTS.md unchanged")
        paths["results"] = REPO / "bench" / "RESULTS.md"
        paths["results"].write_text(report.results_md(data))
    return paths


def main(options: Options) -> int:
    print(
        f"bench: {len(plan(options))} sessions, about {estimate_seconds(options):.0f} s",
        flush=True,
    )
    data = run(options)
    if options.check:
        print("\n".join(report.check_lines(data)))
    else:
        paths = write(data, options)
        print(report.markdown(data, brief=True))
        for kind, path in paths.items():
            print(f"bench: {kind}: {path}")
    if data["survivors"]:
        print(f"bench: processes left running: {data['survivors']}", file=sys.stderr)
        return 1
    if data.get("interrupted"):
        return 130
    failed = [s["peer"] for s in data["sessions"] if failed_session(s)]
    if data.get("error") or failed:
        print(f"bench: failed: {data.get('error') or ', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def failed_session(session: dict) -> bool:
    """It did not start, failed its check or a case, or a repeat of it did not start."""
    repeats = session.get("repeat_runs", [])
    return bool(
        session.get("error") or session.get("case_errors") or any(r.get("error") for r in repeats)
    )
