"""Run a JMeter plan against lbproxy headless, and judge it: jmeter/run PLAN [options].

(jmeter/run is the command: it runs this file with the repo's .venv python.)

    jmeter/run jmeter/integration.jmx --start
    jmeter/run jmeter/performance.jmx --start -J duration=30 -J users=20

Steps: install JMeter if missing (scripts/install/jmeter.sh); compile the
XStream launcher (jmeter/XStreamLauncher.java, into jmeter/.build/); with
--start, start the mocks and the proxy (gunicorn, --workers of them, on
--config, run as its image runs it: python -OO from bytecode compiled
beforehand, devkit/lbproxy.py) and stop them by PID at the end; run JMeter
non-GUI with CSV results while sampling the proxy's memory (RSS and PSS of
the gunicorn master and workers, from /proc); print a summary and a verdict.

The verdict comes from the .jtl, parsed with ``csv`` (JMeter exits 0 whatever
happened): FAIL on any failed sample, on a run with no sample, on a plan that
did not load, on a JMeter that exited non-zero or ran past --timeout, and on a
proxy that this runner started and that died during the run.

Exit status: 0 PASS, 1 FAIL, 2 could not run (setup, ports, usage).
Everything a run leaves is in its results directory (default
jmeter/results/PLAN-TIMESTAMP/): results.jtl, jmeter.log, jmeter.out,
memory.csv, summary.json and the logs of the processes it started.

Standard library only (with the repo's devkit); run it from anywhere (it finds
the repo from its own path).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# jmeter/run runs this file as a script: the repo root, where devkit is, is not on the path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from devkit import processes  # noqa: E402
from devkit.lbproxy import (  # noqa: E402
    Proxy,
    compile_image_bytecode,
    image_python_env,
    start_mock,
)

VENV_BIN = REPO / ".venv" / "bin"
INSTALLER = REPO / "scripts" / "install" / "jmeter.sh"
LAUNCHER_SOURCE = HERE / "XStreamLauncher.java"
BUILD = HERE / ".build"
PROPERTIES = HERE / "run.properties"
JMETER_HOME = Path(os.environ.get("JMETER_HOME", "/usr/share/jmeter"))
JMETER_JARS = ("bin/ApacheJMeter.jar", "lib/ext/ApacheJMeter_http.jar")
DEFAULT_MOCKS = ["mock-a=19181", "mock-b=19182", "mock-c=19183"]
MIB = 1024 * 1024
STOP_TIMEOUT = 15.0  # s from SIGTERM to SIGKILL, for JMeter and what --start started

# JMeter reports a plan it could not load on its output, then exits 0.
LOAD_ERRORS = ("Error in NonGUIDriver", "ForbiddenClassException", "Problem loading XML")


class SetupError(Exception):
    """The run could not take place (exit status 2)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SetupError as error:
        print(f"jmeter/run: {error}", file=sys.stderr)
        return 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jmeter/run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("plan", type=Path, help="the .jmx plan to run")
    parser.add_argument(
        "--start",
        action="store_true",
        help="start the mocks and the proxy for the run, and stop them after",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=HERE / "proxy.yaml",
        help="proxy.yaml for --start (default: jmeter/proxy.yaml)",
    )
    parser.add_argument("--workers", type=int, default=2, help="proxy workers (default 2)")
    parser.add_argument(
        "--mock",
        action="append",
        metavar="NAME=PORT",
        help="a mock to start with --start; repeat (default: " + " ".join(DEFAULT_MOCKS) + ")",
    )
    parser.add_argument(
        "-J",
        "--prop",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a JMeter property (host, port, users, rampup, duration, ...); repeat",
    )
    parser.add_argument(
        "--proxy-pid",
        type=int,
        help="without --start: the gunicorn master PID of a running proxy to sample",
    )
    parser.add_argument("--results", type=Path, help="results directory (default: a new one)")
    parser.add_argument(
        "--timeout", type=float, help="stop JMeter after this many seconds (default: from duration)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo JMeter's output")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    plan = args.plan.resolve()
    if not plan.is_file():
        raise SetupError(f"no plan at {args.plan}")
    props = dict(split_pair(item, "-J") for item in args.prop)
    results = (args.results or default_results(plan)).resolve()
    results.mkdir(parents=True, exist_ok=True)

    java = ensure_jmeter()
    launcher = build_launcher()
    stack = Stack(results)
    try:
        if args.start:
            mocks = [split_pair(item, "--mock") for item in args.mock or DEFAULT_MOCKS]
            listen = stack.start(args.config.resolve(), args.workers, mocks)
            props.setdefault("host", listen[0])
            props.setdefault("port", str(listen[1]))
        proxy_pid = stack.proxy_pid or args.proxy_pid
        sampler = MemorySampler(proxy_pid, results / "memory.csv")
        sampler.start()
        try:
            outcome = run_jmeter(java, launcher, plan, props, results, args)
        finally:
            sampler.stop()
        died = stack.died()
    finally:
        stack.stop()

    summary = summarize(plan, results, outcome, sampler, died)
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(render(summary))
    return 0 if summary["verdict"] == "PASS" else 1


def split_pair(item: str, option: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise SetupError(f"{option} wants NAME=VALUE, got {item!r}")
    return name, value


def default_results(plan: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return HERE / "results" / f"{plan.stem}-{stamp}-{os.getpid()}"


# --- JMeter -----------------------------------------------------------------


def ensure_jmeter() -> str:
    """java, with JMeter installed (by scripts/install/jmeter.sh when missing)."""

    def installed() -> bool:
        return all((JMETER_HOME / jar).is_file() for jar in JMETER_JARS) and bool(
            shutil.which("javac")
        )

    if not installed():
        print("jmeter/run: JMeter is missing, installing it", file=sys.stderr)
        if subprocess.run(["bash", str(INSTALLER)], check=False).returncode != 0:
            raise SetupError(f"{INSTALLER} failed")
    java = shutil.which("java")
    if not java or not installed():
        raise SetupError(f"no java/javac, or no JMeter with its HTTP sampler in {JMETER_HOME}")
    return java


def build_launcher() -> Path:
    """Compile XStreamLauncher.java into jmeter/.build/ unless the class is up to date."""
    target = BUILD / "XStreamLauncher.class"
    if target.exists() and target.stat().st_mtime >= LAUNCHER_SOURCE.stat().st_mtime:
        return BUILD
    javac = shutil.which("javac")
    if not javac:
        raise SetupError("javac is missing (scripts/install/jmeter.sh installs it)")
    BUILD.mkdir(exist_ok=True)
    compiled = subprocess.run(
        [javac, "-nowarn", "-d", str(BUILD), str(LAUNCHER_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if compiled.returncode != 0:
        raise SetupError(f"javac failed:\n{compiled.stdout}{compiled.stderr}")
    return BUILD


@dataclass
class JMeterOutcome:
    jtl: Path
    returncode: int | None
    seconds: float
    timed_out: bool = False
    load_error: str | None = None


def run_jmeter(java, launcher, plan, props, results, args) -> JMeterOutcome:
    jtl = results / "results.jtl"
    jtl.unlink(missing_ok=True)
    command = [
        java,
        *os.environ.get("JVM_ARGS", "-Xms256m -Xmx1g").split(),
        "-Djava.awt.headless=true",
        f"-Djmeter.home={JMETER_HOME}",
        "-cp",
        f"{JMETER_HOME / 'bin' / 'ApacheJMeter.jar'}{os.pathsep}{launcher}",
        "XStreamLauncher",
        "-n",
        "-t",
        str(plan),
        "-l",
        str(jtl),
        "-j",
        str(results / "jmeter.log"),
        "-q",
        str(PROPERTIES),
        "-Jjmeterengine.nongui.port=0",
        *(f"-J{name}={value}" for name, value in props.items()),
    ]
    timeout = args.timeout or default_timeout(props)
    print(f"jmeter/run: {plan.name} -> {results}", file=sys.stderr)
    started = time.monotonic()
    output = (results / "jmeter.out").open("w")
    # Its output through a pipe, not a log file: echoed live and scanned for load errors.
    process = processes.Spawned(
        "jmeter",
        subprocess.Popen(
            command,
            cwd=results,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        ),
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=_relay, args=(process.popen.stdout, output, lines, args.quiet), daemon=True
    )
    reader.start()
    timed_out = False
    try:
        process.wait(timeout)
    except KeyboardInterrupt:
        process.stop(STOP_TIMEOUT)
        raise
    except subprocess.TimeoutExpired:
        timed_out = True
        print(
            f"jmeter/run: JMeter still running after {timeout:.0f} s: stopping it", file=sys.stderr
        )
        process.stop(STOP_TIMEOUT)
    reader.join(10)
    output.close()
    load_error = next((line for line in lines if any(m in line for m in LOAD_ERRORS)), None)
    if load_error is None and not any(line.startswith("Created the tree") for line in lines):
        load_error = "JMeter never reported 'Created the tree successfully'"
    return JMeterOutcome(jtl, process.returncode, time.monotonic() - started, timed_out, load_error)


def _relay(stream, output, lines: list[str], quiet: bool) -> None:
    for line in stream:
        output.write(line)
        lines.append(line.rstrip("\n"))
        if not quiet:
            sys.stderr.write(line)


def default_timeout(props: dict[str, str]) -> float:
    """Long enough for the plan's duration and ramp-up, with room to start and stop."""
    try:
        planned = float(props.get("duration", 600)) + float(props.get("rampup", 60))
    except ValueError:
        planned = 660
    return max(900.0, planned + 300)


# --- the proxy and the mocks --------------------------------------------------


class Stack:
    """The mocks and the proxy that --start runs; stopped by PID, in reverse order."""

    def __init__(self, results: Path):
        self.results = results
        self.started = processes.Registry(timeout=STOP_TIMEOUT)
        self.proxy: Proxy | None = None

    @property
    def proxy_pid(self) -> int | None:
        return self.proxy.pid if self.proxy else None

    def start(self, config: Path, workers: int, mocks: list[tuple[str, str]]) -> tuple[str, int]:
        listen, admin = read_ports(config)
        ports = [int(port) for _, port in mocks] + [listen[1], admin[1]]
        busy = [port for port in ports if processes.port_open(port)]
        if busy:
            raise SetupError(f"port(s) already in use on 127.0.0.1: {busy}; stop what holds them")
        python = VENV_BIN / "python"
        if not python.exists():
            raise SetupError("no .venv: run scripts/setup first")
        try:
            for name, port in mocks:
                log = self.results / f"{name}.log"
                mock = start_mock(name, int(port), label=name, python=python, log=log, timeout=20)
                self.started.add(mock)
            # As its image runs it: -OO, from bytecode compiled beforehand.
            failed = compile_image_bytecode(python)
            if failed:
                raise SetupError(f"could not compile the proxy's bytecode: {failed}")
            self.proxy = Proxy(
                config,
                workers,
                image_python_env(),
                ports=(listen[1], admin[1]),
                gunicorn=VENV_BIN / "gunicorn",
                log=self.results / "proxy.log",
                timeout=20,
            )
            self.started.add(self.proxy)
            wait_healthy(admin, self.proxy)
        except processes.StartError as error:
            raise SetupError(str(error)) from None
        print(
            f"jmeter/run: proxy pid {self.proxy.pid} ({workers} workers) on "
            f"{listen[0]}:{listen[1]}, mocks " + ", ".join(f"{n}:{p}" for n, p in mocks),
            file=sys.stderr,
        )
        return listen

    def died(self) -> str | None:
        dead = [f"{p.name} (exit {p.returncode})" for p in self.started.exited()]
        return ", ".join(dead) or None

    def stop(self) -> None:
        for error in self.started.stop_all():
            print(f"jmeter/run: {error}", file=sys.stderr)


def read_ports(config: Path) -> tuple[tuple[str, int], tuple[str, int]]:
    """(address, port) of proxy.listen and proxy.admin, read with the venv's PyYAML."""
    script = (
        "import json, sys, yaml\n"
        "proxy = (yaml.safe_load(open(sys.argv[1])) or {}).get('proxy') or {}\n"
        "print(json.dumps([proxy.get('listen') or {}, proxy.get('admin') or {}]))\n"
    )
    check = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "app", "check", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        raise SetupError(f"invalid proxy config: {check.stderr.strip()}")
    read = subprocess.run(
        [str(VENV_BIN / "python"), "-c", script, str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    listen, admin = json.loads(read.stdout)

    def endpoint(entry: dict, port: int) -> tuple[str, int]:
        address = entry.get("address", "127.0.0.1")
        if address in ("0.0.0.0", "::", ""):
            address = "127.0.0.1"
        return address, int(entry.get("port", port))

    return endpoint(listen, 8080), endpoint(admin, 9901)


def wait_healthy(admin: tuple[str, int], proxy: Proxy, timeout: float = 20) -> None:
    url = f"http://{admin[0]}:{admin[1]}/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def healthy() -> bool:
        try:
            with opener.open(url, timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    if not processes.wait_until(healthy, proxy, timeout, url, interval=0.1):
        raise SetupError(f"proxy: {url} did not answer 200 within {timeout} s")


# --- memory -------------------------------------------------------------------


@dataclass
class MemorySampler:
    """Total RSS and PSS of a process and its children, once a second, to a CSV file."""

    pid: int | None
    path: Path
    interval: float = 1.0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        if self.pid:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self.path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["seconds", "rss_bytes", "pss_bytes", "processes"])
            writer.writerows(self.samples)

    def _loop(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            tree = processes.tree(self.pid)
            readings = [reading for pid in tree if (reading := processes.memory_of(pid))]
            if readings:
                rss_kib, pss_kib = map(sum, zip(*readings, strict=True))
                seconds = round(time.monotonic() - started, 1)
                self.samples.append((seconds, rss_kib * 1024, pss_kib * 1024, len(readings)))
            self._stop.wait(self.interval)


# --- the verdict --------------------------------------------------------------


def read_jtl(path: Path) -> list[dict[str, str]]:
    """The samples of a CSV .jtl, one dict a row (csv: a failure message may span lines)."""
    with Path(path).open(newline="", encoding="utf-8", errors="replace") as jtl:
        return list(csv.DictReader(jtl))


def percentile(ordered: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(plan, results, outcome: JMeterOutcome, sampler: MemorySampler, died) -> dict:
    rows = read_jtl(outcome.jtl) if outcome.jtl.exists() else []
    failed = [row for row in rows if row.get("success", "").strip().lower() != "true"]
    elapsed = sorted(int(row.get("elapsed") or 0) for row in rows)
    if rows:
        first = min(int(row["timeStamp"]) for row in rows)
        last = max(int(row["timeStamp"]) + int(row.get("elapsed") or 0) for row in rows)
        window = max((last - first) / 1000, 0.001)
    else:
        window = 0.0

    reasons = []
    if outcome.load_error:
        reasons.append(f"plan did not load: {outcome.load_error.strip()}")
    if not rows:
        reasons.append("empty run: no sample in the .jtl")
    if failed:
        reasons.append(f"{len(failed)} failed sample(s)")
    if outcome.timed_out:
        reasons.append("JMeter ran past the timeout")
    elif outcome.returncode not in (0, None):
        reasons.append(f"JMeter exited with {outcome.returncode}")
    if died:
        reasons.append(f"died during the run: {died}")

    memory = sampler.samples
    labels: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        labels.setdefault(row.get("label", ""), []).append(row)
    return {
        "plan": plan.name,
        "results": str(results),
        "samples": len(rows),
        "errors": len(failed),
        "error_pct": round(100 * len(failed) / len(rows), 3) if rows else 0.0,
        "seconds": round(window, 3),
        "tps": round(len(rows) / window, 1) if rows else 0.0,
        "latency_ms": {
            "p50": percentile(elapsed, 0.50),
            "p90": percentile(elapsed, 0.90),
            "p99": percentile(elapsed, 0.99),
            "max": elapsed[-1] if elapsed else 0,
            "mean": round(sum(elapsed) / len(elapsed), 1) if elapsed else 0,
        },
        "memory": {
            "samples": len(memory),
            "peak_rss_mib": round(max(s[1] for s in memory) / MIB, 1) if memory else None,
            "final_rss_mib": round(memory[-1][1] / MIB, 1) if memory else None,
            "peak_pss_mib": round(max(s[2] for s in memory) / MIB, 1) if memory else None,
            "final_pss_mib": round(memory[-1][2] / MIB, 1) if memory else None,
            "processes": memory[-1][3] if memory else None,
        },
        "labels": {
            label: {
                "samples": len(group),
                "errors": sum(row.get("success", "").lower() != "true" for row in group),
                "p50": percentile(sorted(int(r.get("elapsed") or 0) for r in group), 0.5),
            }
            for label, group in labels.items()
        },
        "failures": [
            {
                "label": row.get("label", ""),
                "code": row.get("responseCode", ""),
                "message": (row.get("failureMessage") or row.get("responseMessage") or "").strip(),
            }
            for row in failed[:20]
        ],
        "jmeter_exit": outcome.returncode,
        "verdict": "FAIL" if reasons else "PASS",
        "reasons": reasons,
    }


def render(summary: dict) -> str:
    latency = summary["latency_ms"]
    memory = summary["memory"]
    lines = [f"== jmeter/run summary: {summary['plan']} ({summary['results']})"]
    if 0 < len(summary["labels"]) <= 40:
        width = max(len(label) for label in summary["labels"])
        for label, stats in summary["labels"].items():
            lines.append(
                f"   {label:<{width}}  {stats['samples']:>7} samples"
                f"  {stats['errors']:>5} errors  p50 {stats['p50']} ms"
            )
    for failure in summary["failures"][:10]:
        message = " | ".join(line for line in failure["message"].splitlines() if line.strip())
        lines.append(f"   FAILED {failure['label']} [{failure['code']}]: {message[:300]}")
    if memory["samples"]:
        mem = (
            f"peak {memory['peak_rss_mib']} MiB RSS, final {memory['final_rss_mib']} MiB RSS"
            f" (PSS peak {memory['peak_pss_mib']} MiB, final {memory['final_pss_mib']} MiB;"
            f" {memory['processes']} processes)"
        )
    else:
        mem = "not sampled (use --start, or --proxy-pid)"
    lines += [
        f"samples   {summary['samples']}",
        f"errors    {summary['errors']} ({summary['error_pct']:.2f}%)",
        f"TPS       {summary['tps']} over {summary['seconds']} s",
        f"latency   p50 {latency['p50']} ms, p90 {latency['p90']} ms, p99 {latency['p99']} ms"
        f" (mean {latency['mean']} ms, max {latency['max']} ms)",
        f"memory    {mem}",
    ]
    verdict = summary["verdict"]
    if summary["reasons"]:
        verdict += ": " + "; ".join(summary["reasons"])
    lines.append(f"verdict   {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
