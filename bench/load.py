"""wrk as the load generator: one call, one parsed result.

wrk runs with 2 threads (1 when there is 1 connection: wrk needs at least one
connection per thread), HTTP/1.1 keep-alive, and bench/report.lua, which
prints the summary, the error counts and latency percentiles as one JSON line.
"""

from __future__ import annotations

import json
import subprocess
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

    def args(self) -> list[str]:
        threads = min(2, self.connections)
        return [
            "wrk",
            f"-t{threads}",
            f"-c{self.connections}",
            f"-d{self.seconds}s",
            f"--timeout={self.timeout_s}s",
            "--latency",
            "-s",
            str(REPORT_LUA),
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{self.port}{self.path}",
        ]


def start(load: Load, log: Path) -> subprocess.Popen:
    """wrk in its own session (Ctrl-C reaches the harness, which stops it); stderr to log."""
    with open(log, "ab") as errors:
        return subprocess.Popen(
            load.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
        )


def parse(output: str) -> dict:
    """The JSON line of report.lua, with requests/s and MB/s added."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER) :])
            seconds = result["duration_us"] / 1e6
            result["rps"] = result["requests"] / seconds if seconds else 0.0
            result["mb_per_s"] = result["bytes"] / seconds / 1e6 if seconds else 0.0
            return result
    raise ValueError(f"no {MARKER.strip()} line in wrk output:\n{output[-2000:]}")
