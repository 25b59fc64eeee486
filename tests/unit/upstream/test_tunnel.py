"""The tunnel's copying, on gevent socket pairs: both ways, early bytes first,
half-close passed on, the idle limit, the close reasons."""

from __future__ import annotations

import gevent
from gevent import socket

from app.upstream.tunnel import Tunnel


def pairs():
    client_far, client_near = socket.socketpair()
    upstream_near, upstream_far = socket.socketpair()
    return client_far, client_near, upstream_near, upstream_far


def test_bytes_go_both_ways_early_bytes_first_and_a_half_close_is_passed_on():
    client, client_near, upstream_near, upstream = pairs()
    tunnel = Tunnel(client_near, upstream_near, idle_timeout=5)
    runner = gevent.spawn(tunnel.run, b"early-up|", b"early-down|")
    client.sendall(b"hello")
    received = b""
    while len(received) < len(b"early-up|hello"):
        received += upstream.recv(100)
    assert received == b"early-up|hello"
    assert client.recv(100) == b"early-down|"
    upstream.sendall(b"world")
    assert client.recv(100) == b"world"
    client.shutdown(socket.SHUT_WR)  # the client is done sending...
    assert upstream.recv(100) == b""  # ...which the upstream is told
    upstream.sendall(b"last words")  # the other way still flows
    assert client.recv(100) == b"last words"
    upstream.close()
    assert runner.get(timeout=5) == "client"  # the client closed its side first
    assert tunnel.sent == {
        "upstream": len(b"early-up|hello"),
        "client": len(b"early-down|world") + 10,
    }


def test_no_byte_for_the_idle_limit_closes_both_sides():
    client, client_near, upstream_near, upstream = pairs()
    tunnel = Tunnel(client_near, upstream_near, idle_timeout=0.3)
    assert gevent.spawn(tunnel.run).get(timeout=5) == "idle"
    assert client.recv(10) == b"" and upstream.recv(10) == b""


def test_an_upstream_that_goes_away_ends_the_tunnel_as_upstream():
    client, client_near, upstream_near, upstream = pairs()
    tunnel = Tunnel(client_near, upstream_near, idle_timeout=5)
    runner = gevent.spawn(tunnel.run)
    gevent.sleep(0.05)
    upstream.close()
    gevent.sleep(0.05)
    client.close()
    assert runner.get(timeout=5) == "upstream"


def test_close_from_outside_is_a_shutdown():
    client, client_near, upstream_near, _upstream = pairs()
    tunnel = Tunnel(client_near, upstream_near, idle_timeout=5)
    runner = gevent.spawn(tunnel.run)
    gevent.sleep(0.05)
    tunnel.close("shutdown")
    assert runner.get(timeout=5) == "shutdown"
    assert client.recv(10) == b""


def test_a_client_slow_to_read_holds_its_direction_back_but_the_tunnel_lives():
    """Backpressure is not an end: only tunnel_idle of silence is."""
    client, client_near, upstream_near, upstream = pairs()
    tunnel = Tunnel(client_near, upstream_near, idle_timeout=5)
    runner = gevent.spawn(tunnel.run)
    payload = b"x" * (4 * 1024 * 1024)  # far more than the socket buffers hold
    writer = gevent.spawn(upstream.sendall, payload)
    gevent.sleep(2)  # the client reads nothing for longer than a second
    received = 0
    while received < len(payload):
        received += len(client.recv(1 << 20))
    writer.get(timeout=5)
    assert tunnel.reason is None and not runner.ready()
    client.close()
    upstream.close()
    assert runner.get(timeout=5) in ("client", "upstream")
