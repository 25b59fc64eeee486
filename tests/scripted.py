"""A raw-socket upstream that answers each request as its path says, broken or not.

``GET /seq/<N>/<behaviour>`` is answered by ``BEHAVIOURS[behaviour]``; a good
answer's body is ``seq=<N>`` so a client can tell its own response from
anybody else's. Every connection is served on its own thread, request after
request, as a keep-alive upstream would; a behaviour may keep writing after
its response (late bytes), cut the connection, or drip.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

LEAKED = b"LEAKED" + b"." * 44  # 50 bytes
PLANTED = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n" + LEAKED


def ok(seq: str) -> bytes:
    body = f"seq={seq}".encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


def _late(seq, conn):
    conn.sendall(ok(seq))
    time.sleep(0.15)
    conn.sendall(PLANTED)


def _no_body_then_body(head: bytes):
    def behaviour(seq, conn):
        conn.sendall(head)
        time.sleep(0.15)
        conn.sendall(b"seq=" + seq.encode() + b"-leak")

    return behaviour


def _drip(seq, conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(40):
        time.sleep(0.2)
        conn.sendall(b"x")


def _send(data_of):
    return lambda seq, conn: conn.sendall(data_of(seq.encode()))


def _send_and_close(data_of):
    def behaviour(seq, conn):
        conn.sendall(data_of(seq.encode()))
        conn.shutdown(socket.SHUT_WR)
        return "close"

    return behaviour


BEHAVIOURS = {
    "ok": lambda seq, conn: conn.sendall(ok(seq)),
    # Finding 1: bytes after a complete response, on a connection that looks idle.
    "late": _late,
    "extra": _send(
        lambda s: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nseq=%bEXTRA" % (len(s) + 4, s)
    ),
    "head-body": _no_body_then_body(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
    "204-body": _no_body_then_body(b"HTTP/1.1 204 No Content\r\n\r\n"),
    "304-body": _no_body_then_body(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n"),
    # Finding 2: interim responses before the final one.
    "early-hints": _send(
        lambda s: (
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok(s.decode())
        )
    ),
    # Finding 3: a CR in the reason phrase.
    "reason-cr": _send(
        lambda s: b"HTTP/1.1 200 OK\rSet-Cookie: injected=1\r\nContent-Length: 5\r\n\r\nseq=" + s
    ),
    # Finding 4: Content-Length values that must not be believed.
    "cl-conflict": _send(
        lambda s: b"HTTP/1.1 200 OK\r\nContent-Length: 41\r\nContent-Length: 51\r\n\r\n" + b"x" * 51
    ),
    "cl-plus": _send(lambda s: b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nseq=" + s),
    "cl-underscore": _send(lambda s: b"HTTP/1.1 200 OK\r\nContent-Length: 0_5\r\n\r\nseq=" + s),
    "cl-list": _send(
        lambda s: (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d, %d\r\n\r\nseq=%b" % (len(s) + 4, len(s) + 4, s)
        )
    ),
    # Finding 5: Content-Length with chunked: the chunks frame it, the length goes.
    "cl-te": _send(
        lambda s: (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\nseq=%b\r\n0\r\n\r\n" % (len(s) + 4, s)
        )
    ),
    # Lenient chunked reading, and an early end.
    "chunk-hex-prefix": _send(
        lambda s: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nseq=" + s
    ),
    "chunk-no-crlf": _send(
        lambda s: (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\nseq=%bXX0\r\n\r\n"
            % (len(s) + 4, s)
        )
    ),
    "early-eof": _send_and_close(
        lambda s: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nseq=" + s
    ),
    "chunked-eof": _send_and_close(
        lambda s: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nseq=" + s
    ),
    "bare-lf": _send(lambda s: b"HTTP/1.1 200 OK\nContent-Length: 5\n\nseq=" + s),
    "switching": _send(lambda s: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
    "te-gzip": _send(
        lambda s: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "drip": _drip,
}

_REQUEST = re.compile(rb"(\w+) /seq/(\d+)/([\w-]+)")


class ScriptedUpstream:
    """The upstream on 127.0.0.1, one thread per connection; ``stop()`` ends it all."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.requests = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        with contextlib.suppress(OSError), conn:
            conn.settimeout(30)
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                need = int(length[1]) if length else 0
                while len(pending) < need:
                    pending += conn.recv(65536)
                pending = pending[need:]
                with self.lock:
                    self.requests += 1
                request = _REQUEST.match(head)
                if request is None:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                seq, behaviour = request[2].decode(), request[3].decode()
                if BEHAVIOURS[behaviour](seq, conn) == "close":
                    return

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.close()
