"""WaitTimer: one timer per connection, restarted in full for each wait."""

from __future__ import annotations

import socket as stdlib_socket
import time

import gevent
import pytest
from gevent import socket

from app.http.waits import WaitTimer


def test_a_wait_past_its_seconds_raises_timeout_error_each_time():
    timer = WaitTimer(0.2)
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(TimeoutError), timer:
            gevent.sleep(5)
        assert 0.15 < time.monotonic() - started < 1.0
    timer.close()


def test_a_wait_ended_early_leaves_nothing_armed_and_the_next_gets_all_its_seconds():
    timer = WaitTimer(0.4)
    for _ in range(3):
        with timer:
            gevent.sleep(0.2)  # half the time, then stopped
    gevent.sleep(0.5)  # nothing fires meanwhile
    started = time.monotonic()
    with pytest.raises(TimeoutError), timer:
        gevent.sleep(5)
    assert time.monotonic() - started > 0.35  # not the 0.2 s left the last time
    timer.close()


def test_only_a_gevent_socket_gets_a_timer():
    near, far = socket.socketpair()
    plain_near, plain_far = stdlib_socket.socketpair()
    timer = WaitTimer.for_socket(near, 1.0)
    assert isinstance(timer, WaitTimer) and timer.seconds == 1.0
    assert WaitTimer.for_socket(plain_near, 1.0) is None
    timer.close()
    for sock in (near, far, plain_near, plain_far):
        sock.close()
