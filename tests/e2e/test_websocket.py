"""WebSocket tunnelling through the real proxy, against both HTTP servers.

The upstream is a `websockets` echo server in its own process
(tests/ws_upstream.py); clients are `websockets`' sync client and raw sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import connect

from tests.processes import Proxy, start_mock, start_ws_upstream, write_config


@pytest.fixture(scope="module")
def upstreams():
    servers = {
        "ws": start_ws_upstream("ws-echo"),
        "victim": start_ws_upstream("ws-victim"),
        "web": start_mock("ws-web"),
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module", params=["lbproxy", "gunicorn"])
def proxy(request, upstreams, tmp_path_factory):
    def hosts(name):
        return [{"address": "127.0.0.1", "port": upstreams[name].port}]

    services = [
        {"name": "ws", "domain": "ws.test", "hosts": hosts("ws"), "timeout": {"tunnel_idle": 1.5}},
        {"name": "victim", "domain": "victim.test", "hosts": hosts("victim")},
        {"name": "limited", "domain": "limited.test", "hosts": hosts("ws"), "max_tunnels": 2},
        {"name": "web", "domain": "web.test", "hosts": hosts("web")},
    ]
    directory = tmp_path_factory.mktemp("ws")
    config = write_config(directory, services, limits={"client_timeout": 1})
    access_log = directory / "access.log"
    env = {"PROXY_HTTP_SERVER": request.param, "PROXY_ACCESS_LOG": str(access_log)}
    server = Proxy(config, workers=2, env=env)
    server.access_log = access_log
    server.http_server = request.param
    yield server
    server.stop()


def open_ws(proxy, domain="ws.test", path="/", **options):
    """A WebSocket client on the proxy's port, for ``domain`` (its Host header)."""
    return connect(
        f"ws://{domain}:{proxy.port}{path}",
        sock=socket.create_connection(("127.0.0.1", proxy.port), timeout=5),
        open_timeout=5,
        close_timeout=1,
        compression=None,
        max_size=2**22,
        **options,
    )


def echoes(ws, message) -> bool:
    """One round trip through the tunnel."""
    ws.send(message)
    return ws.recv(timeout=5) == message


def log_entries(proxy) -> list[dict]:
    text = proxy.access_log.read_text() if proxy.access_log.exists() else ""
    return [json.loads(line) for line in text.splitlines()]


def tunnel_lines(proxy, domain: str, count: int = 1, timeout: float = 4.0) -> list[dict]:
    """The access-log lines of ``domain``'s tunnels, once ``count`` are there."""
    deadline = time.monotonic() + timeout
    while True:
        entries = [
            e
            for e in log_entries(proxy)
            if (e["host"] or "").split(":")[0] == domain and e["status"] == 101
        ]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def line_of(proxy, request_id: str, timeout: float = 4.0) -> dict:
    """The access-log line of the request (or tunnel) with this X-Request-Id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in log_entries(proxy):
            if entry["request_id"] == request_id:
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


def test_text_and_binary_come_back_byte_exact_with_query_and_subprotocol(proxy):
    payload = os.urandom(80 * 1024)
    with open_ws(proxy, path="/room/1?user=a%2fb", subprotocols=["superchat"]) as ws:
        assert echoes(ws, "hello")
        ws.send(payload)
        assert ws.recv(timeout=5) == payload
        ws.send("whoami")
        seen = json.loads(ws.recv(timeout=5))
    assert seen == {"path": "/room/1?user=a%2fb", "subprotocol": "superchat", "proto": "http"}
    (entry,) = tunnel_lines(proxy, "ws.test")[-1:]
    # A clean close: the client's Close frame, the server's answer, and then the
    # server closes the TCP connection first (RFC 6455 §7.1.1).
    assert entry["outcome"] == "success" and entry["tunnel_close"] == "upstream"
    assert entry["request_bytes"] > 80 * 1024 and entry["response_bytes"] > 80 * 1024


def test_twenty_concurrent_tunnels_never_cross_talk(proxy):
    errors = []

    def client(number: int) -> None:
        try:
            with open_ws(proxy) as ws:
                for i in range(50):
                    message = f"client {number} message {i}"
                    ws.send(message)
                    answer = ws.recv(timeout=5)
                    if answer != message:
                        errors.append((number, i, answer))
        except Exception as error:  # every failure is a finding
            errors.append((number, repr(error)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


def test_an_upgrade_the_upstream_refuses_returns_its_status(proxy):
    with pytest.raises(InvalidStatus) as refused:
        open_ws(proxy, path="/refuse")
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"no tunnel for you\n"


def test_an_idle_tunnel_closes_after_tunnel_idle_and_a_chatty_one_survives(proxy):
    """tunnel_idle is 1.5 s here; client_timeout (1 s) no longer applies in a tunnel."""
    stack = contextlib.ExitStack()
    idle, chatty = stack.enter_context(open_ws(proxy)), stack.enter_context(open_ws(proxy))
    started = time.monotonic()
    closed_at = None
    while time.monotonic() - started < 3.5:
        chatty.send("ping")
        assert chatty.recv(timeout=2) == "ping"
        if closed_at is None:
            try:
                idle.recv(timeout=0.3)
            except ConnectionClosed:
                closed_at = time.monotonic() - started
            except TimeoutError:
                pass
    stack.close()
    assert closed_at is not None and 1.3 < closed_at < 3.0
    reasons = [entry["tunnel_close"] for entry in tunnel_lines(proxy, "ws.test")]
    assert "idle" in reasons


def test_an_upstream_killed_mid_tunnel_is_seen_by_the_client_within_a_second(proxy, upstreams):
    victim = upstreams["victim"]
    with open_ws(proxy, domain="victim.test") as ws:
        assert echoes(ws, "before")
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=3)
        assert time.monotonic() - killed < 1.0
    victim.wait()
    upstreams["victim"] = restarted = start_ws_upstream("ws-victim", victim.port)
    assert restarted.running()


def test_a_client_that_leaves_frees_the_upstream_socket(proxy):
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    raw.sendall(
        b"GET / HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"X-Request-Id: leaver-" + proxy.http_server.encode() + b"\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert raw.recv(4096).startswith(b"HTTP/1.1 101")
    raw.close()  # no Close frame: the client just goes
    deadline = time.monotonic() + 3
    while not (
        ended := [
            e
            for e in tunnel_lines(proxy, "ws.test", timeout=0)
            if e["request_id"] == f"leaver-{proxy.http_server}"
        ]
    ):
        assert time.monotonic() < deadline, "the tunnel did not end when its client left"
        time.sleep(0.1)
    assert ended[0]["tunnel_close"] == "client"


def test_max_tunnels_gives_503_and_plain_requests_stay_fast_with_100_idle_tunnels(proxy):
    held, refusals = contextlib.ExitStack(), []
    with held:
        opened = 0
        for _ in range(12):  # max_tunnels 2 per worker, 2 workers: never more than 4 open
            try:
                held.enter_context(open_ws(proxy, domain="limited.test"))
                opened += 1
            except InvalidStatus as error:
                refusals.append(error.response)
        # A refusal gives back no place it never took: more tries never open more.
        assert 2 <= opened <= 4 and len(refusals) == 12 - opened
        assert {(r.status_code, r.headers["Retry-After"]) for r in refusals} == {(503, "1")}
        with contextlib.ExitStack() as idle:
            for _ in range(100):
                idle.enter_context(open_ws(proxy))
            took = []
            for _ in range(20):
                started = time.monotonic()
                answer = requests.get(proxy.url, headers={"Host": "web.test"}, timeout=5)
                took.append(time.monotonic() - started)
                assert answer.status_code == 200
            assert sorted(took)[10] < 0.1  # the median GET is not held up by the tunnels
            admin = f"http://127.0.0.1:{proxy.admin_port}/status"
            services = requests.get(admin, timeout=5).json()["services"]
            shown = {service["name"]: service["tunnels"] for service in services}
            assert shown["ws"] > 0 and shown["web"] == 0  # that worker's open tunnels


def test_upgrade_h2c_and_upgrade_without_connection_are_not_tunnelled(proxy):
    for fields in (
        "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        "HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        "Upgrade: websocket\r\n",
    ):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(
                f"GET /x HTTP/1.1\r\nHost: web.test\r\n{fields}Connection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        seen = json.loads(body)["headers"]
        assert "Upgrade" not in seen and "Http2-Settings" not in seen


def test_a_malformed_upgrade_request_gets_400_and_the_worker_lives(proxy):
    workers = sorted(proxy.children())
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Content-Length: 3\r\n\r\nabc"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    assert sorted(proxy.children()) == workers
    with open_ws(proxy) as ws:
        assert echoes(ws, "still here")


def test_sighup_closes_tunnels_within_graceful_timeout_and_new_ones_open_at_once(proxy):
    request_id = f"reloaded-{proxy.http_server}"
    with open_ws(proxy, additional_headers={"X-Request-Id": request_id}) as ws:
        assert echoes(ws, "before")
        proxy.signal(signal.SIGHUP)
        hup = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert time.monotonic() - hup < 5  # graceful_timeout is 30 s: ended well before
    # New tunnels open on the new workers straight away. A connection the old
    # worker took in its last moment is refused (503, or closed): a client
    # reconnects, as WebSocket clients do.
    reopened = time.monotonic()
    for attempt in range(5):
        try:
            with open_ws(proxy) as fresh:
                assert echoes(fresh, "after")
            break
        except (InvalidStatus, InvalidMessage, OSError):
            assert attempt < 4
            time.sleep(0.2)
    assert time.monotonic() - reopened < 3
    assert line_of(proxy, request_id)["tunnel_close"] == "shutdown"
