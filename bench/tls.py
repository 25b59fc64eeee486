"""The tls section: lbproxy and HAProxy terminating TLS the same way.

Both serve one ECDSA P-256 leaf for ``bench.test`` and 127.0.0.1 (SAN), made
with devkit/certs.py in the run's temp dir, offer ALPN ``h2, http/1.1`` and
forward plain HTTP/1.1 to the same upstream nginx as every other section.
The cases, each a warm-up and a measured run as elsewhere:

  h1         HTTP/1.1 over TLS, keep-alive: wrk on https://, at 1 and 100 connections
  h2         HTTP/2 over TLS: h2load -m 1 (one stream per connection at a time, so it
             compares with HTTP/1.1), at 1 and 100 connections
  handshake  a new TLS connection per request: wrk with ``Connection: close``, at 100

Before the cases, ``probe()`` opens a few connections with Python's ssl to
record what the peer negotiates (TLS version, cipher, ALPN when offered h2 and
http/1.1) and how many of the sessions it issued it resumes: wrk (like most
clients) resumes the TLS session of a connection's previous connection when
the server accepts it, so the handshake case is a mix of full and resumed
handshakes, in the proportion this probe shows.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from devkit.certs import make_ca, make_leaf

ALPN = ("h2", "http/1.1")
CONNECTIONS = (1, 100)
HANDSHAKE_CONNECTIONS = 100
# Run order in a session: keep-alive first, the connection churn (TIME_WAIT sockets) last.
CASES = {
    "h1": "HTTP/1.1, keep-alive (wrk)",
    "h2": "HTTP/2, 1 stream per connection (h2load -m 1)",
    "handshake": "new TLS connection per request (wrk, Connection: close)",
}
PEERS = ("haproxy-tls", "lbproxy-2w-tls")
BASELINE = "haproxy-tls"  # the ratio's denominator, as haproxy is for the plain sections


@dataclass(frozen=True)
class Files:
    """The run's certificate: leaf and key (lbproxy), both in one PEM (HAProxy's crt), CA."""

    cert: Path
    key: Path
    pem: Path
    ca: Path


def make_files(directory: Path, name: str) -> Files:
    """A test CA and an ECDSA P-256 leaf for name and 127.0.0.1 (openssl CLI)."""
    ca = make_ca(directory, "lbproxy bench CA")
    leaf = make_leaf(directory, ca, [name], ips=("127.0.0.1",), stem="bench")
    pem = directory / "bench-haproxy.pem"
    pem.write_text(leaf.cert.read_text().rstrip("\n") + "\n" + leaf.key.read_text())
    pem.chmod(0o600)
    return Files(leaf.cert, leaf.key, pem, ca.cert)


def client_context(ca: Path, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A client context that verifies the bench certificate (its SAN has 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(list(alpn))
    return context


def probe(port: int, ca: Path, host: str, rounds: int = 20, timeout: float = 5.0) -> dict:
    """What the peer negotiates, and how many of its own sessions it resumes.

    One connection offering h2 and http/1.1 (ALPN, version, cipher); then
    ``rounds`` + 1 HTTP/1.1 requests with ``Connection: close``, each on a new
    connection that offers the session of the one before (as wrk does).
    """
    offered = client_context(ca, ALPN)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        offered.wrap_socket(raw, server_hostname=host) as tls,
    ):
        seen = {"version": tls.version(), "cipher": tls.cipher()[0]}
        seen["alpn"] = tls.selected_alpn_protocol()
    context = client_context(ca)
    session = None
    resumed = 0
    request = f"GET /1k HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    for attempt in range(rounds + 1):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host, session=session) as tls,
        ):
            if attempt:
                resumed += tls.session_reused
            tls.sendall(request)
            while tls.recv(65536):  # TLS 1.3 tickets arrive with the response
                pass
            session = tls.session
    seen["resumed"] = resumed
    seen["resume_attempts"] = rounds
    return seen
