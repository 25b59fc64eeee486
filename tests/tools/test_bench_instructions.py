"""bench/instructions.py: instructions per request, counted by valgrind in a
real lbproxy worker, and its parts."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench import instructions

REPO = Path(__file__).resolve().parents[2]


def test_counts_the_instructions_of_a_worker_with_features_on_and_off(tmp_path):
    out = tmp_path / "counts.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--requests", "300", "--warmup", "100",
         "--connections", "3", "--repeats", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["variant"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"on", "off"}
    for row in rows.values():
        assert row["requests"] == 300 and row["errors"] == 0
        assert row["runs"] == [row["per_request"]]
        # A proxied request is some 10^5 instructions of Python: neither the
        # worker's start (not counted) nor an idle worker (a few thousand).
        assert 50_000 < row["per_request"] < 5_000_000, row
    # Metrics and the access log are work: the variant with them counts more.
    assert rows["on"]["per_request"] > rows["off"]["per_request"]
    assert f"on: {rows['on']['per_request']:,} instructions per request" in done.stdout


class _Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy answers
    status = 200

    def do_GET(self):
        body = b"x" * 1024
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    servers = []

    def start(status: int) -> int:
        handler = type("Handler", (_Answer,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_sends_exactly_the_requests_asked_and_counts_what_failed(answering):
    assert instructions.send_requests(answering(200), 25, 4) == 0
    assert instructions.send_requests(answering(503), 10, 3) == 10
    # Nobody listening: every request of every connection failed.
    assert instructions.send_requests(1, 6, 2) == 6


def test_reads_the_total_of_a_callgrind_dump(tmp_path):
    dump = tmp_path / "callgrind.1.1"
    dump.write_text("version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 123456\n")
    assert instructions.callgrind_total(dump) == 123456
    dump.write_text("events: Ir\ntotals: 42\n")
    assert instructions.callgrind_total(dump) == 42
    dump.write_text("events: Ir\n")
    with pytest.raises(ValueError):
        instructions.callgrind_total(dump)


def test_a_variant_is_the_median_of_its_counts():
    runs = ((5, 0), (3, 1), (4, 0))  # (instructions per request, failed)
    counts = [instructions.Count("on", 100, n * 100, errors) for n, errors in runs]
    assert instructions.summary("on", counts) == {
        "variant": "on", "per_request": 4, "runs": [5, 3, 4], "requests": 100, "errors": 1,
    }  # fmt: skip
