"""A StatsD stand-in for the benchmark: count the UDP datagrams, keep a sample.

``python -m bench.sink PORT REPORT``: receives on 127.0.0.1:PORT until SIGTERM
or SIGINT, then writes {"datagrams", "bytes", "sample"} as JSON to REPORT. It
only counts, so the proxy's metrics cost is measured without a real daemon's
CPU in the way, and the harness can tell whether metrics were emitted at all.
"""

from __future__ import annotations

import json
import signal
import socket
import sys


def main(argv: list[str]) -> int:
    port, report = int(argv[0]), argv[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", port))
    counts = {"datagrams": 0, "bytes": 0, "sample": []}
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        sock.close()  # wakes recv with an error

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    buffer = bytearray(65536)
    while not stopping:
        try:
            size = sock.recv_into(buffer)
        except OSError:
            break
        counts["datagrams"] += 1
        counts["bytes"] += size
        if len(counts["sample"]) < 5:
            counts["sample"].append(bytes(buffer[:size]).decode("utf-8", "replace"))
    with open(report, "w") as out:
        json.dump(counts, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
