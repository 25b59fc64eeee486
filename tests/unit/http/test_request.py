"""Raw target building, Host parsing and body streaming."""

from __future__ import annotations

import io
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import BadRequest, ClientAbort, MethodNotAllowed
from app.http.framing import ProtocolError, split_target
from app.http.headers import upstream_headers
from app.http.request import domain_of, parse_request, raw_target, tunnelled_upgrade
from tests import wsgi_env


def environ(**extra):
    return wsgi_env.environ(**{"HTTP_HOST": "a.test", "REMOTE_ADDR": "192.0.2.1", **extra})


def test_raw_uri_is_used_as_is():
    assert raw_target(environ(RAW_URI="/a%7eb/%2f?q=%41", PATH_INFO="/a~b//")) == "/a%7eb/%2f?q=%41"


def test_without_raw_uri_the_target_is_rebuilt_quoted():
    env = environ(PATH_INFO="/a b/ü", QUERY_STRING="x=1")
    del env["RAW_URI"]
    env["PATH_INFO"] = "/a b/ü".encode().decode("latin-1")  # WSGI's latin-1 tunnelling
    assert raw_target(env) == "/a%20b/%C3%BC?x=1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/p?q", ("/p?q", None)),
        ("*", ("*", None)),
        ("http://a.test/p%2f?q=1", ("/p%2f?q=1", "a.test")),
        ("HTTP://A.test:8080", ("/", "A.test:8080")),
        ("http://a.test?x=1", ("/?x=1", "a.test")),
        ("https://a.test/x", ("/x", "a.test")),
    ],
)
def test_split_target(raw, expected):
    assert split_target(raw) == expected


@pytest.mark.parametrize("raw", ["http:///nohost", "http://user:pw@a.test/"])
def test_bad_authorities_are_refused(raw):
    with pytest.raises(ProtocolError):
        split_target(raw)


@pytest.mark.parametrize(
    ("header", "domain"),
    [
        ("A.Test", "a.test"),
        ("a.test:8080", "a.test"),
        ("a.test.", "a.test"),
        ("[::1]:80", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        (" a.test ", "a.test"),
    ],
)
def test_domain_of_host_header(header, domain):
    assert domain_of(header) == domain


@pytest.mark.parametrize(
    "header", [":80", "a.test:x", "a:1:2", "[::1", "[::1]x", "a b", "u@a.test"]
)
def test_invalid_host_headers_are_400(header):
    with pytest.raises(BadRequest):
        domain_of(header)


def test_parse_request_collects_everything_to_forward():
    request = parse_request(
        environ(RAW_URI="/x?y", HTTP_HOST="A.test:81", HTTP_X_FORWARDED_FOR="10.0.0.9")
    )
    assert (request.method, request.target, request.domain) == ("GET", "/x?y", "a.test")
    headers = dict(request.headers)
    assert headers["Host"] == "A.test:81"
    assert headers["X-Forwarded-For"] == "10.0.0.9, 192.0.2.1"
    assert request.body is None


def test_absolute_form_replaces_the_host_header():
    request = parse_request(environ(RAW_URI="http://b.test/z", HTTP_HOST="a.test"))
    assert (request.domain, request.target) == ("b.test", "/z")
    assert request.headers[0] == ("Host", "b.test")


def test_absolute_form_without_host_is_refused_in_http_1_1():
    env = environ(RAW_URI="http://b.test/z")
    del env["HTTP_HOST"]
    with pytest.raises(BadRequest, match="missing Host"):
        parse_request(env)
    env["SERVER_PROTOCOL"] = "HTTP/1.0"
    assert parse_request(env).domain == "b.test"


def test_missing_host_and_connect_are_refused():
    env = environ()
    del env["HTTP_HOST"]
    with pytest.raises(BadRequest, match="missing Host"):
        parse_request(env)
    with pytest.raises(MethodNotAllowed):
        parse_request(environ(REQUEST_METHOD="CONNECT", RAW_URI="a.test:443"))


def test_content_length_body_is_read_in_chunks_up_to_its_length():
    data = bytes(range(256)) * 1000
    request = parse_request(
        environ(CONTENT_LENGTH=str(len(data)), **{"wsgi.input": io.BytesIO(data + b"extra")})
    )
    assert not request.body.chunked and not request.body.started
    chunks = list(request.body)
    assert request.body.started
    assert b"".join(chunks) == data and max(map(len, chunks)) <= 64 * 1024


def test_chunked_body_reads_until_the_end():
    data = b"z" * 200_000
    request = parse_request(
        environ(HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input": io.BytesIO(data)})
    )
    assert request.body.chunked
    assert b"".join(request.body) == data


def test_a_short_body_is_a_client_abort():
    request = parse_request(environ(CONTENT_LENGTH="10", **{"wsgi.input": io.BytesIO(b"abc")}))
    with pytest.raises(ClientAbort):
        list(request.body)


def test_a_read_error_is_a_client_abort():
    class Broken:
        def read(self, size):
            raise OSError("reset by peer")

    request = parse_request(environ(CONTENT_LENGTH="10", **{"wsgi.input": Broken()}))
    with pytest.raises(ClientAbort, match="reset by peer"):
        list(request.body)


pchar = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%/", max_size=40)


@given(pchar, st.text(alphabet=string.ascii_letters + "%=&+/?", max_size=30))
def test_origin_form_targets_pass_unchanged(path, query):
    target = "/" + path + ("?" + query if query else "")
    assert raw_target(environ(RAW_URI=target)) == target
    assert split_target(target) == (target, None)


@given(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True), pchar)
def test_absolute_form_keeps_path_bytes(host, path):
    assert split_target(f"http://{host}/{path}") == (f"/{path}", host)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([("Connection", "Upgrade"), ("Upgrade", "websocket")], "websocket"),
        ([("Connection", "keep-alive, upgrade"), ("Upgrade", "WebSocket")], "websocket"),
        ([("Upgrade", "websocket")], None),  # no Connection: upgrade
        ([("Connection", "upgrade"), ("Upgrade", "h2c")], None),  # h2c is never tunnelled
        ([("Connection", "upgrade")], None),
        ([("Connection", "close"), ("Upgrade", "websocket")], None),
    ],
)
def test_which_upgrades_are_tunnelled(fields, expected):
    assert tunnelled_upgrade(fields) == expected


def test_a_tunnelled_upgrade_keeps_upgrade_and_connection_upstream():
    fields = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "abc"),
        ("Sec-WebSocket-Version", "13"),
    ]
    headers = dict(upstream_headers(fields, "h", "1.2.3.4", "http", upgrade="websocket"))
    assert headers["Upgrade"] == "websocket" and headers["Connection"] == "Upgrade"
    assert headers["Sec-WebSocket-Key"] == "abc"
    plain = dict(upstream_headers(fields, "h", "1.2.3.4", "http"))
    assert "Upgrade" not in plain and "Connection" not in plain
