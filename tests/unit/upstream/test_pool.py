"""A pooled connection's wait of one interval (``UpstreamConnection.recv_within``),
on gevent socket pairs as in a worker, and on plain sockets as in threads."""

from __future__ import annotations

import socket as stdlib_socket
import time
from types import SimpleNamespace

import gevent
import pytest
from gevent import socket

from app.upstream.pool import UpstreamConnection


def connection_on(sock) -> UpstreamConnection:
    """An UpstreamConnection around ``sock`` (what urllib3's connection holds)."""
    return UpstreamConnection(SimpleNamespace(sock=sock, close=sock.close))


def test_a_wait_gets_what_arrives_under_one_timer_made_once():
    near, far = socket.socketpair()
    connection = connection_on(near)
    connection.set_timeout(30.0)
    gevent.spawn_later(0.05, far.sendall, b"first")
    assert connection.recv_within(1.0, 100) == b"first"
    timer = connection.wait_timer
    assert timer is not None and not timer.timer.active  # stopped once the bytes came
    assert near.gettimeout() is None  # the timer bounded the wait, not the socket
    far.sendall(b"second")
    assert connection.recv_within(1.0, 100) == b"second"
    assert connection.wait_timer is timer  # the same timer for every wait
    connection.close()
    far.close()


def test_a_wait_ends_after_its_interval_and_the_next_one_too():
    near, far = socket.socketpair()
    connection = connection_on(near)
    for _ in range(2):  # the timer fires again once restarted
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.recv_within(0.2, 100)
        assert 0.15 < time.monotonic() - started < 1.0
        assert not connection.wait_timer.timer.active
    gevent.sleep(0.3)  # nothing left armed to fire meanwhile
    far.sendall(b"late")
    assert connection.recv_within(0.2, 100) == b"late"
    connection.close()
    far.close()


def test_every_wait_gets_the_whole_interval():
    """A libev timer stopped early keeps only the time it had left; restarted
    with start() it would end the next wait that much sooner."""
    near, far = socket.socketpair()
    connection = connection_on(near)
    for _ in range(3):
        gevent.spawn_later(0.2, far.sendall, b"x")
        assert connection.recv_within(0.4, 100) == b"x"  # stopped 0.2 s into 0.4
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connection.recv_within(0.4, 100)
    assert time.monotonic() - started > 0.35  # not the 0.2 s left the last time
    connection.close()
    far.close()


def test_a_later_recv_has_a_timeout_again():
    """The wait leaves the socket's timeout off; the reads after it set theirs."""
    near, far = socket.socketpair()
    connection = connection_on(near)
    connection.start_exchange(0.2, None)
    far.sendall(b"head")
    assert connection.recv_within(1.0, 100) == b"head"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connection.recv(100)  # no more bytes: timeout.read, not forever
    assert time.monotonic() - started < 1.0
    connection.close()
    far.close()


def test_a_plain_socket_waits_under_its_own_timeout():
    """Outside gevent (the HTTP server run in threads) there is no timer."""
    near, far = stdlib_socket.socketpair()
    connection = connection_on(near)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connection.recv_within(0.2, 100)
    assert time.monotonic() - started < 1.0
    assert connection.wait_timer is None and near.gettimeout() == 0.2
    connection.close()
    far.close()


@pytest.mark.parametrize("event", ["bytes", "close"])
def test_an_idle_connection_with_bytes_or_an_end_waiting_is_readable(event):
    near, far = stdlib_socket.socketpair()
    connection = connection_on(near)
    assert not connection.readable()
    if event == "bytes":
        far.sendall(b"HTTP/1.1 200 OK\r\n")  # nobody asked: never a response to reuse
    else:
        far.close()
    assert connection.readable()
    connection.close()
    far.close()
