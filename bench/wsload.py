"""The websocket section's load client: WebSocket echo ping-pong, JSON results.

``python -m bench.wsload --port N --connections C --seconds S [--processes P]``

Opens C WebSocket connections (``ws://bench.test:N/``, to 127.0.0.1:N, so the
Host header is ``bench.test:N``) with the ``websockets`` asyncio client, one
task per connection, then, in a common window of S seconds, each connection
sends a 32-byte text message and waits for its echo before sending the next
(one message in flight per connection). Only round trips that complete, with
the echo equal to what was sent, inside the window count; their send-to-echo
times give the latency percentiles. With P > 1 the connections are split over
P processes (this one and P - 1 children, the same script with ``--worker``),
which start their windows at the same monotonic instant (CLOCK_MONOTONIC is
system-wide on Linux) and report their round trips to this one.

Errors: ``connect`` (handshake failed), ``read`` (the connection closed or
failed while in use), ``status`` (an echo that differs from what was sent),
``timeout`` (no echo within --timeout; the connection is then given up).
The last line of output is ``BENCH-JSON {...}`` with the same fields as
wrk's report (requests = round trips; load.parse's ``rps`` = messages/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time

from bench.load import MARKER, latency_summary  # MARKER: the line load.parse reads

HOST = "bench.test"
MESSAGE_BYTES = 32
PAYLOAD = "x" * MESSAGE_BYTES
START_DELAY_S = 1.0  # from the start to the window: interpreters up, connections open


def _errors() -> dict:
    return {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}


async def _one(port, start_ns, end_ns, timeout, latencies, errors) -> None:
    from websockets.asyncio.client import connect

    try:
        ws = await connect(
            f"ws://{HOST}:{port}/",
            host="127.0.0.1",
            port=port,
            proxy=None,
            compression=None,
            ping_interval=None,
            open_timeout=timeout,
            close_timeout=1,
        )
    except Exception:  # any failure to open is a connect error
        errors["connect"] += 1
        return
    try:
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
        while True:
            sent = time.monotonic_ns()
            if sent >= end_ns:
                break
            await ws.send(PAYLOAD)
            try:
                echo = await asyncio.wait_for(ws.recv(), timeout)
            except TimeoutError:
                errors["timeout"] += 1
                return
            done = time.monotonic_ns()
            if echo != PAYLOAD:
                errors["status"] += 1
            elif done <= end_ns:
                latencies.append((done - sent) // 1000)
    except Exception:  # closed or failed while in use
        errors["read"] += 1
    finally:
        with contextlib.suppress(Exception):  # the window is over: closing is best effort
            await asyncio.wait_for(ws.close(), 2)


async def _share(port, connections, start_ns, seconds, timeout) -> dict:
    latencies: list[int] = []
    errors = _errors()
    end_ns = start_ns + int(seconds * 1e9)
    await asyncio.gather(
        *(_one(port, start_ns, end_ns, timeout, latencies, errors) for _ in range(connections))
    )
    return {"latencies_us": latencies, "errors": errors}


def summarise(parts: list[dict], seconds: float) -> dict:
    """The shares of every process as one result with wrk's fields."""
    latencies = sorted(value for part in parts for value in part["latencies_us"])
    errors = _errors()
    for part in parts:
        for key, count in part["errors"].items():
            errors[key] += count
    count = len(latencies)
    return {
        "requests": count,
        "duration_us": int(seconds * 1_000_000),
        "bytes": count * MESSAGE_BYTES,  # payload echoed back
        "errors": errors,
        "latency_us": latency_summary(latencies),
        "message_bytes": MESSAGE_BYTES,
        "processes": len(parts),
    }


def split(connections: int, processes: int) -> list[int]:
    """Connections per process, as even as they go (no process without one)."""
    processes = max(1, min(processes, connections))
    base, extra = divmod(connections, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


def _worker(args: argparse.Namespace, share: int, start_ns: int) -> subprocess.Popen:
    """A child process running ``share`` connections in the same window."""
    command = [
        sys.executable, "-m", "bench.wsload", "--worker",
        "--port", str(args.port), "--connections", str(share),
        "--seconds", str(args.seconds), "--timeout", str(args.timeout),
        "--start-ns", str(start_ns),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-ns", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    start_ns = args.start_ns or time.monotonic_ns() + int(START_DELAY_S * 1e9)
    shares = split(args.connections, 1 if args.worker else args.processes)
    children = [_worker(args, share, start_ns) for share in shares[1:]]
    mine = asyncio.run(_share(args.port, shares[0], start_ns, args.seconds, args.timeout))
    if args.worker:
        print(json.dumps(mine), flush=True)
        return 0
    parts = [mine]
    for child, share in zip(children, shares[1:], strict=True):
        output, _ = child.communicate(timeout=args.seconds + 30)
        try:
            parts.append(json.loads(output.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            lost = _errors()
            lost["connect"] = share  # a share without a report: its connections failed
            parts.append({"latencies_us": [], "errors": lost})
    result = summarise(parts, args.seconds)
    print(MARKER + json.dumps(result), flush=True)
    return 0


def probe(port: int, timeout: float = 2.0) -> bool:
    """One WebSocket handshake and echo through port (Host bench.test): is it up?"""
    import socket

    from websockets.sync.client import connect

    try:
        with connect(
            f"ws://{HOST}:{port}/",
            sock=socket.create_connection(("127.0.0.1", port), timeout=timeout),
            proxy=None,
            compression=None,
            open_timeout=timeout,
            close_timeout=1,
        ) as ws:
            ws.send(PAYLOAD)
            return ws.recv(timeout=timeout) == PAYLOAD
    except Exception:  # not up yet, whatever the reason
        return False


if __name__ == "__main__":
    sys.exit(main())
