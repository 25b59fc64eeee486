"""The bench's aiohttp peer: aiohttp's server and client on uvloop, N processes.

``python bench_aiohttp.py --port P --processes 2`` (in bench/.venv-peers, with
BENCH_UPSTREAM set): a supervisor binds one listening socket per process, each
with SO_REUSEPORT, forks the processes and waits. Every process serves its own
socket with aiohttp's web server and forwards each request to the upstream
through its pooled aiohttp client session (bench_forward.py).

Why one listener per process: the kernel hashes each new connection to one of
the SO_REUSEPORT sockets, so every process gets its share of the connections
whichever is busiest; with one shared socket, the process whose event loop wakes
first takes the connection, and one may take nearly all (what issue 22 saw with
gunicorn). The sockets are bound before the fork, so all of them exist before
the first connection arrives.

SIGTERM or SIGINT to the supervisor stops every process; if one dies, the
supervisor stops the others and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import traceback

import aiohttp
import uvloop
from aiohttp import web
from bench_forward import end_to_end, new_session, upstream_url
from multidict import CIMultiDict

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    headers = end_to_end(request.headers.items())
    try:
        async with request.app[SESSION].request(
            request.method, upstream_url(request.raw_path), headers=headers, data=body or None
        ) as upstream:
            payload = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        return web.Response(status=502, text=f"upstream: {type(error).__name__}\n")
    # aiohttp's server sets Content-Length for the body it sends: drop the upstream's.
    kept = CIMultiDict(end_to_end(upstream.headers.items()))
    return web.Response(status=upstream.status, reason=upstream.reason, headers=kept, body=payload)


async def client_session(app: web.Application):
    app[SESSION] = new_session()
    yield
    await app[SESSION].close()


async def serve(sock: socket.socket) -> None:
    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{target:.*}", forward)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def listener(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def start(sockets: list[socket.socket]) -> list[int]:
    """Fork one process per socket; each keeps its own socket only."""
    pids = []
    for mine in sockets:
        pid = os.fork()
        if pid == 0:
            for sock in sockets:
                if sock is not mine:
                    sock.close()
            os._exit(child(mine))  # never back into the supervisor's code
        pids.append(pid)
    for sock in sockets:
        sock.close()
    return pids


def child(sock: socket.socket) -> int:
    try:
        uvloop.run(serve(sock))
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def supervise(pids: list[int]) -> int:
    """Wait for the processes; on SIGTERM/SIGINT stop them all, or when one dies."""
    stopping = False

    def stop(signum=None, frame=None):
        nonlocal stopping
        stopping = True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while pids:
        pid, _ = os.wait()
        pids.remove(pid)
        if not stopping:
            status = 1
            stop()
    return status


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    sockets = [listener(args.host, args.port) for _ in range(args.processes)]
    return supervise(start(sockets))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
