"""TLS termination's pieces over real sockets: SNI choosing the certificate,
the bounded handshake, is_tls."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
import yaml

from app.config import load_config
from app.http.tls import handshake, is_tls, server_context
from devkit.certs import make_ca, make_leaf


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    ca = make_ca(directory)
    pairs = [
        make_leaf(directory, ca, ["a.test"], stem="a"),
        make_leaf(directory, ca, ["b.test", "*.wild.test"], stem="b"),
    ]
    certificates = [{"cert": str(pair.cert), "key": str(pair.key)} for pair in pairs]
    document = {
        "proxy": {
            "listen": {
                "port": 8443,
                "tls": {"certificates": certificates, "alpn": ["h2", "http/1.1"]},
            },
            "services": [
                {"name": "s", "domain": "s.test", "hosts": [{"address": "127.0.0.1", "port": 1}]}
            ],
        }
    }
    path = directory / "proxy.yaml"
    path.write_text(yaml.safe_dump(document))
    return ca, server_context(load_config(path).listen.tls)


def serve_once(context, timeout=2.0):
    """A listener whose one connection is handshaken; the result lands in ``out``."""
    listener = socket.create_server(("127.0.0.1", 0))
    out = {}

    def run():
        client, _ = listener.accept()
        started = time.monotonic()
        tls = handshake(context, client, timeout)
        out["tls"], out["took"] = tls, time.monotonic() - started
        if tls is not None:
            out["alpn"] = tls.selected_alpn_protocol()
            out["is_tls"] = is_tls(tls) and not is_tls(client)
            tls.close()
        listener.close()

    thread = threading.Thread(target=run)
    thread.start()
    return listener.getsockname()[1], thread, out


def names_served(ca, context, server_name, alpn=("http/1.1",)):
    port, thread, out = serve_once(context)
    client = ssl.create_default_context(cafile=str(ca.cert))
    client.check_hostname = False
    client.set_alpn_protocols(list(alpn))
    with (
        socket.create_connection(("127.0.0.1", port)) as plain,
        client.wrap_socket(plain, server_hostname=server_name) as tls,
    ):
        served = [v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"]
    thread.join(5)
    return served, out


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("a.test", ["a.test"]),
        ("B.TEST.", ["b.test", "*.wild.test"]),  # case and a final dot ignored
        ("x.wild.test", ["b.test", "*.wild.test"]),
        ("y.x.wild.test", ["a.test"]),  # a wildcard covers one label only
        ("nobody.test", ["a.test"]),  # unknown: the first
        (None, ["a.test"]),  # no SNI: the first
    ],
)
def test_sni_chooses_the_certificate(setup, server_name, expected):
    ca, context = setup
    served, out = names_served(ca, context, server_name)
    assert served == expected and out["is_tls"]


def test_alpn_offers_h2(setup):
    ca, context = setup
    assert names_served(ca, context, "a.test", alpn=("h2", "http/1.1"))[1]["alpn"] == "h2"
    assert names_served(ca, context, "a.test")[1]["alpn"] == "http/1.1"


def test_plain_http_fails_the_handshake_at_once(setup):
    _, context = setup
    port, thread, out = serve_once(context)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        thread.join(5)
    assert out["tls"] is None and out["took"] < 1


def test_a_silent_client_is_given_up_after_the_timeout(setup):
    _, context = setup
    port, thread, out = serve_once(context, timeout=0.3)
    with socket.create_connection(("127.0.0.1", port)):
        thread.join(5)
    assert out["tls"] is None and 0.25 < out["took"] < 2
