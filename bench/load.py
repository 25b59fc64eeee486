"""The load generators: wrk (HTTP/1.1, plain or TLS), h2load (HTTP/2 over TLS) and
bench/wsload.py (the websocket section's WebSocket echo ping-pong).

wrk runs with 2 threads (1 when there is 1 connection: wrk needs at least one
connection per thread), HTTP/1.1 keep-alive (or ``Connection: close`` for the
tls section's handshake case), and bench/report.lua, which prints the summary,
the error counts and latency percentiles as one JSON line.

h2load (the tls section's HTTP/2 case) runs with the same threads, ``-m 1``
(one stream per connection at a time: comparable with HTTP/1.1 keep-alive),
for a fixed duration (``-D``), and writes one line per request to a log file
(``--log-file``), from which the percentiles are computed. Both give the same
result fields (requests, duration, bytes, errors, latency percentiles in µs).

bench/wsload.py (``WsLoad``) runs with this Python, in 1 process at 1
connection and 2 at more (the machine's 2 CPUs), and prints the same fields,
requests being completed round trips of a 32-byte message.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPORT_LUA = Path(__file__).resolve().parent / "report.lua"
MARKER = "BENCH-JSON "
HOST = "bench.test"


@dataclass(frozen=True)
class Load:
    port: int
    path: str
    connections: int
    seconds: int
    timeout_s: int = 2
    scheme: str = "http"  # https: TLS (wrk takes the scheme from the URL)
    close: bool = False  # Connection: close, a new connection (and handshake) per request

    tool = "wrk"

    def args(self) -> list[str]:
        threads = min(2, self.connections)
        headers = ["-H", f"Host: {HOST}"]
        if self.close:
            headers += ["-H", "Connection: close"]
        return [
            "wrk",
            f"-t{threads}",
            f"-c{self.connections}",
            f"-d{self.seconds}s",
            f"--timeout={self.timeout_s}s",
            "--latency",
            "-s",
            str(REPORT_LUA),
            *headers,
            f"{self.scheme}://127.0.0.1:{self.port}{self.path}",
        ]

    def parse(self, output: str) -> dict:
        return parse(output)


@dataclass(frozen=True)
class H2Load:
    """h2load over TLS (ALPN h2), one stream per connection, for ``seconds``."""

    port: int
    path: str
    connections: int
    seconds: int
    log_file: Path

    tool = "h2load"

    def args(self) -> list[str]:
        return [
            "h2load",
            f"-c{self.connections}",
            f"-t{min(2, self.connections)}",
            "-m1",
            f"-D{self.seconds}",
            "-H", f":authority: {HOST}",
            f"--log-file={self.log_file}",
            f"https://127.0.0.1:{self.port}{self.path}",
        ]  # fmt: skip

    def parse(self, output: str) -> dict:
        lines = []
        if self.log_file.exists():  # not when h2load failed before its first request
            lines = self.log_file.read_text().splitlines()
            self.log_file.unlink()
        return parse_h2load(output, lines, self.seconds)


@dataclass(frozen=True)
class WsLoad:
    """bench/wsload.py: ``connections`` WebSocket connections ping-ponging for ``seconds``."""

    port: int
    connections: int
    seconds: int
    timeout_s: int = 2

    tool = "wsload"

    @property
    def processes(self) -> int:
        return min(2, self.connections)

    def args(self) -> list[str]:
        return [
            sys.executable, "-m", "bench.wsload",
            "--port", str(self.port),
            "--connections", str(self.connections),
            "--seconds", str(self.seconds),
            "--processes", str(self.processes),
            "--timeout", str(self.timeout_s),
        ]  # fmt: skip

    def parse(self, output: str) -> dict:
        return parse(output, "wsload")


Spec = Load | H2Load | WsLoad


def start(load: Spec, log: Path) -> subprocess.Popen:
    """The load tool in its own session (Ctrl-C reaches the harness, which stops it)."""
    if isinstance(load, H2Load):
        load.log_file.unlink(missing_ok=True)  # h2load appends to it
    with open(log, "ab") as errors:
        return subprocess.Popen(
            load.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
        )


def parse(output: str, tool: str = "wrk") -> dict:
    """The BENCH-JSON line a load tool printed (report.lua for wrk, bench/wsload.py),
    with requests/s (messages/s for wsload) and MB/s added."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER) :])
            seconds = result["duration_us"] / 1e6
            result["rps"] = result["requests"] / seconds if seconds else 0.0
            result["mb_per_s"] = result["bytes"] / seconds / 1e6 if seconds else 0.0
            return result
    raise ValueError(f"no {MARKER.strip()} line in {tool} output:\n{output[-2000:]}")


_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.M,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_TRAFFIC = re.compile(r"^traffic: \S+ \((\d+)\) total", re.M)
_NEGOTIATED = {
    "tls_version": re.compile(r"^TLS Protocol: (\S+)", re.M),
    "cipher": re.compile(r"^Cipher: (\S+)", re.M),
    "alpn": re.compile(r"^Application protocol: (\S+)", re.M),
}


def percentile(ordered: list[int], pct: float) -> int:
    """Nearest-rank percentile of a sorted list (0 when it is empty)."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(round(pct * len(ordered) / 100, 6)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(ordered: list[int]) -> dict:
    """wrk's latency fields (µs) from a sorted list of durations: mean, stdev,
    min, max and p50/p90/p99/p999 (all 0 when it is empty)."""
    count = len(ordered)
    mean = sum(ordered) / count if count else 0.0
    stdev = math.sqrt(sum((d - mean) ** 2 for d in ordered) / count) if count else 0.0
    return {
        "mean": round(mean, 1),
        "stdev": round(stdev, 1),
        "min": ordered[0] if ordered else 0,
        "max": ordered[-1] if ordered else 0,
        **{f"p{str(pct).replace('.', '')}": percentile(ordered, pct) for pct in (50, 90, 99, 99.9)},
    }


def parse_h2load(output: str, log_lines: list[str], seconds: int) -> dict:
    """h2load's summary and per-request log as wrk's result fields.

    In timing mode (``-D``) h2load counts only the requests of the measured
    duration (its req/s is those ÷ -D): requests = "done", duration = -D.
    Errors: "errored" (stream or connection errors) as read errors, 4xx and
    5xx as status errors, "timeout" as timeouts. Latency: the log's third
    column, µs from the request's start to the end of its response.
    """
    counts = _REQUESTS.search(output)
    status = _STATUS.search(output)
    traffic = _TRAFFIC.search(output)
    if not (counts and status and traffic):
        raise ValueError(f"no summary in h2load output:\n{output[-2000:]}")
    total, started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    s2xx, s3xx, s4xx, s5xx = map(int, status.groups())
    durations = sorted(int(line.split("\t")[2]) for line in log_lines if line.count("\t") == 2)
    result = {
        "requests": done,
        "duration_us": seconds * 1_000_000,
        "bytes": int(traffic.group(1)),
        "errors": {"connect": 0, "read": errored, "write": 0, "status": s4xx + s5xx,
                   "timeout": timeout},
        "latency_us": latency_summary(durations),
        "h2load": {"total": total, "started": started, "done": done, "succeeded": succeeded,
                   "failed": failed, "errored": errored, "timeout": timeout,
                   "status": {"2xx": s2xx, "3xx": s3xx, "4xx": s4xx, "5xx": s5xx},
                   "logged": len(durations)},
    }  # fmt: skip
    for key, pattern in _NEGOTIATED.items():
        found = pattern.search(output)
        result[key] = found.group(1) if found else None
    result["rps"] = done / seconds if seconds else 0.0
    result["mb_per_s"] = result["bytes"] / seconds / 1e6 if seconds else 0.0
    return result
