"""Turns between a worker's connections (app/process/turns.py), on gevent's real
loop, with lbproxy's real HTTP server over gevent socket pairs."""

from __future__ import annotations

import gevent
import gevent.socket

from app.http.framing import HeadLimits
from app.http.server import Server
from app.process.turns import Turns, gevent_turns

LIMITS = HeadLimits(request_line=200, header_count=10, header_size=200)
PIPELINED = 20


class Worker:
    """What the server reads of gunicorn's worker."""

    alive = True
    nr = 0
    max_requests = 10**9


def test_polls_count_the_loops_polls_not_the_work_between_them():
    turns = gevent_turns()
    try:
        before = turns.polls
        sum(range(100_000))  # work that never waits
        assert turns.polls == before
        gevent.sleep(0.001)  # a wait: the loop polls
        assert turns.polls > before
    finally:
        turns.close()


def test_a_closed_turns_counts_no_more():
    turns = gevent_turns()
    turns.close()
    gevent.sleep(0.001)
    assert turns.polls == 0


class Pauses:
    """A pause that counts instead of yielding."""

    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


def serve_pipelined(turns: Turns, count: int, wait_in_app: bool) -> None:
    """One connection, ``count`` requests ready in its socket, then its end."""

    def app(environ, start_response):
        if wait_in_app:
            gevent.sleep(0.001)  # as a request waiting for its upstream does
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = Server(app, {"SERVER_NAME": "x", "SERVER_PORT": "80"}, LIMITS, 5.0, Worker(), turns)
    ours, theirs = gevent.socket.socketpair()
    theirs.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * count)
    theirs.shutdown(gevent.socket.SHUT_WR)
    gevent.spawn(server.serve, ours, ("127.0.0.1", 1)).join(timeout=5)
    theirs.close()


def test_a_request_that_never_waited_ends_with_a_pause_and_one_that_waited_without():
    pauses = Pauses()
    turns = Turns(gevent.get_hub().loop, pauses)
    try:
        serve_pipelined(turns, 5, wait_in_app=False)
        assert pauses.count == 5
        pauses.count = 0
        serve_pipelined(turns, 5, wait_in_app=True)
        assert pauses.count == 0
    finally:
        turns.close()


def serve_two_connections(turns: Turns | None) -> list[str]:
    """Connection "a" has PIPELINED requests waiting in its socket, "b" one;
    both are served by one server in this hub. The order the app saw them in."""
    served: list[str] = []

    def app(environ, start_response):
        served.append(f"{environ['REMOTE_PORT']}{environ['PATH_INFO']}")
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = Server(app, {"SERVER_NAME": "x", "SERVER_PORT": "80"}, LIMITS, 5.0, Worker(), turns)
    clients, greenlets = [], []
    for name, count in (("a", PIPELINED), ("b", 1)):
        ours, theirs = gevent.socket.socketpair()
        requests = "".join(f"GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n" for i in range(count))
        theirs.sendall(requests.encode())
        theirs.shutdown(gevent.socket.SHUT_WR)
        clients.append(theirs)
        greenlets.append(gevent.spawn(server.serve, ours, ("127.0.0.1", name)))
    gevent.joinall(greenlets, timeout=5, raise_error=True)
    for client in clients:
        client.close()
    return served


def test_a_connection_with_its_requests_ready_lets_the_others_in_between():
    turns = gevent_turns()
    try:
        served = serve_two_connections(turns)
    finally:
        turns.close()
    assert len(served) == PIPELINED + 1
    assert served.index("b/0") == 1  # right after a's first request


def test_without_turns_one_connection_holds_the_worker_while_it_has_requests():
    """Why turns exist: gevent runs a greenlet until it waits, and a greenlet
    whose requests are all in its socket never waits."""
    served = serve_two_connections(None)
    assert served.index("b/0") == PIPELINED
