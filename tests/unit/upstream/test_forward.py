"""The pooled Session's proxy-safe settings, and one-host forwarding against a real mock."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import socket
import threading
import time
import weakref

import pytest
import requests
import responses

from app.config import Host, Timeout
from app.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from app.http.request import ProxyRequest, RequestBody
from app.upstream.forward import Forwarder
from app.upstream.pool import Pools, UpstreamConnection
from app.upstream.session import make_session
from tests.processes import free_port, start_mock


@pytest.fixture(scope="module")
def short_keepalive_mock():
    """An upstream that closes idle keep-alive connections after 1 s."""
    server = start_mock("short-keepalive", keepalive=1)
    yield server
    server.stop()


def get(target="/", body=None, method="GET"):
    return ProxyRequest(method, target, "x.test", [("Host", "x.test")], body)


def local_port(pool) -> int | None:
    """The local port of the idle connection on top of the pool (the next one used)."""
    return pool.idle[-1].sock.getsockname()[1] if pool.idle else None


def forwarder_for(host: Host) -> tuple[Forwarder, object]:
    forwarder = Forwarder(Pools.from_session(make_session(1, 10)))
    return forwarder, forwarder.pools.get(host.address, host.port)


def read(response):
    data = b"".join(response)
    response.close()
    return data


@responses.activate
def test_session_never_keeps_cookies_between_requests():
    responses.get("http://up.test/login", headers={"Set-Cookie": "sid=alice; Path=/"})
    responses.get("http://up.test/next")
    session = make_session(hosts=1, connections_per_host=10)
    session.get("http://up.test/login")
    session.get("http://up.test/next")
    assert len(session.cookies) == 0
    assert "Cookie" not in responses.calls[1].request.headers
    # The control: requests' default Session would have replayed Alice's cookie.
    plain = requests.Session()
    plain.get("http://up.test/login")
    plain.get("http://up.test/next")
    assert responses.calls[3].request.headers["Cookie"] == "sid=alice"


@responses.activate
def test_session_adds_no_headers_of_its_own():
    responses.get("http://up.test/")
    make_session(hosts=1, connections_per_host=10).get("http://up.test/")
    sent = responses.calls[0].request.headers
    assert "User-Agent" not in sent and "Accept-Encoding" not in sent


def test_session_ignores_proxy_settings_in_the_environment(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    session = make_session(hosts=1, connections_per_host=10)
    assert session.trust_env is False
    settings = session.merge_environment_settings("http://up.test/", {}, None, None, None)
    assert settings["proxies"] == {}


def test_pools_are_sized_for_the_hosts_and_the_concurrency():
    adapter = make_session(hosts=40, connections_per_host=1000).get_adapter("http://x/")
    assert adapter._pool_connections == 40
    assert adapter._pool_maxsize == 1000
    assert adapter.max_retries.total == 0


def test_a_connection_is_reused_then_given_back(short_keepalive_mock):
    host = Host("127.0.0.1", short_keepalive_mock.port)
    forwarder, pool = forwarder_for(host)
    ports = set()
    for _ in range(3):
        response = forwarder.send(host, get(), Timeout())
        assert json.loads(read(response))["method"] == "GET"
        ports.add(local_port(pool))
    assert len(ports) == 1 and None not in ports  # one TCP connection served all three


def test_a_stale_pooled_connection_is_retried_on_a_fresh_one(short_keepalive_mock, monkeypatch):
    """The upstream closes after 1 s idle; our idle limit is longer: the reuse must not fail.

    The pool checks an idle socket for EOF before handing it out; the race it
    cannot see (the upstream closes just after the check) is made certain here
    by turning that check off.
    """
    monkeypatch.setattr(UpstreamConnection, "readable", lambda self: False)
    host = Host("127.0.0.1", short_keepalive_mock.port)
    forwarder, _ = forwarder_for(host)
    patient = Timeout(idle=30)
    assert read(forwarder.send(host, get(), patient))
    time.sleep(1.5)
    stale = []
    for method in ("GET", "DELETE", "POST"):
        request = get(method=method)
        response = forwarder.send(host, request, patient)
        assert response.status == 200
        read(response)
        stale.append(request.stale_retries)
    assert stale == [1, 0, 0]  # counted with the request's retries (app/wsgi.py)


def test_a_closed_upstream_connection_is_freed_without_the_cyclic_gc(short_keepalive_mock):
    host = Host("127.0.0.1", short_keepalive_mock.port)
    forwarder, pool = forwarder_for(host)
    read(forwarder.send(host, get(), Timeout()))
    connection = pool.idle.pop()
    urllib3_connection = weakref.ref(connection.conn)
    gc.disable()  # only reference counting may free it
    try:
        connection.close()
        with pytest.raises(OSError):
            connection.stream.read_eof(1)  # a read after close fails as a closed socket's
        del connection
        assert urllib3_connection() is None
    finally:
        gc.enable()


def test_idle_connections_older_than_the_idle_timeout_are_not_reused(short_keepalive_mock):
    host = Host("127.0.0.1", short_keepalive_mock.port)
    forwarder, pool = forwarder_for(host)
    read(forwarder.send(host, get(), Timeout(idle=0.2)))
    first = local_port(pool)
    read(forwarder.send(host, get(), Timeout(idle=0.2)))
    assert local_port(pool) == first  # within the idle time: reused
    time.sleep(0.3)
    read(forwarder.send(host, get(), Timeout(idle=0.2)))
    assert local_port(pool) not in (first, None)


def test_a_body_already_sent_is_never_replayed(short_keepalive_mock, monkeypatch):
    monkeypatch.setattr(UpstreamConnection, "readable", lambda self: False)
    host = Host("127.0.0.1", short_keepalive_mock.port)
    forwarder, _ = forwarder_for(host)
    read(forwarder.send(host, get(), Timeout(idle=30)))
    time.sleep(1.5)  # the pooled connection is now closed by the upstream
    body = RequestBody(io.BytesIO(b"x" * 10), 10)
    try:
        response = forwarder.send(host, get("/?echo=raw", body, "POST"), Timeout(idle=30))
    except UpstreamProtocolError:
        assert body.started  # failed after taking the body: refused, not replayed
    else:  # the kernel may still have taken the bytes and the reset came later
        assert read(response) == b"x" * 10


def test_connect_refused_is_a_connect_error():
    host = Host("127.0.0.1", free_port())
    forwarder, _ = forwarder_for(host)
    with pytest.raises(UpstreamConnectError):
        forwarder.send(host, get(), Timeout(connect=1))


def test_read_timeout_is_a_timeout(short_keepalive_mock):
    host = Host("127.0.0.1", short_keepalive_mock.port)
    forwarder, _ = forwarder_for(host)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        forwarder.send(host, get("/?delay=2"), Timeout(read=0.3))
    assert time.monotonic() - started < 1.5


def test_an_abandoned_response_closes_its_connection(short_keepalive_mock):
    host = Host("127.0.0.1", short_keepalive_mock.port)
    forwarder, pool = forwarder_for(host)
    read(forwarder.send(host, get(), Timeout()))
    first = local_port(pool)
    response = forwarder.send(host, get("/?size=500000"), Timeout())
    next(iter(response))
    response.close()  # the client went away mid-body
    assert local_port(pool) is None  # closed, not kept with half a body on the wire
    read(forwarder.send(host, get(), Timeout()))
    assert local_port(pool) != first


def _pausing_upstream(pause: float) -> tuple[socket.socket, threading.Thread]:
    """A one-connection upstream: its head and half the body, then ``pause``
    seconds, then the other half."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
            time.sleep(pause)
            conn.sendall(b"67890")
            conn.recv(1)  # until the proxy closes or pools it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize(("read_timeout", "whole"), [(3.0, True), (0.5, False)])
def test_a_body_read_waits_for_the_read_timeout_not_the_client_check_interval(read_timeout, whole):
    """The wait for the first byte leaves the socket at the 1 s client check
    interval; a body read past it is bounded by timeout.read again."""
    listener, thread = _pausing_upstream(1.5)
    with listener:
        host = Host("127.0.0.1", listener.getsockname()[1])
        forwarder, _ = forwarder_for(host)
        response = forwarder.send(host, get(), Timeout(read=read_timeout))
        chunks = []
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            for chunk in response:
                chunks.append(chunk)
        response.close()
    assert (b"".join(chunks) == b"1234567890") is whole
    if not whole:  # cut at the read timeout, not later
        assert time.monotonic() - started < 1.2
    thread.join(5)
