"""Hop-by-hop filtering in both directions, and the X-Forwarded-* headers."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from app.headers import (
    HOP_BY_HOP,
    REPLACED_BY_PROXY,
    add_forwarded,
    connection_tokens,
    header_name,
    request_headers,
    response_headers,
)


def test_environ_keys_become_header_names():
    assert header_name("HTTP_X_REQUEST_ID") == "X-Request-Id"
    assert header_name("HTTP_HOST") == "Host"


def test_request_headers_drop_hop_by_hop_and_connection_listed_names():
    environ = {
        "HTTP_HOST": "a.test",
        "HTTP_CONNECTION": "keep-alive, X-Secret ,Foo",
        "HTTP_X_SECRET": "1",
        "HTTP_FOO": "2",
        "HTTP_KEEP_ALIVE": "timeout=5",
        "HTTP_PROXY_CONNECTION": "keep-alive",
        "HTTP_TE": "trailers",
        "HTTP_TRAILER": "X-Sum",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "HTTP_UPGRADE": "h2c",
        "HTTP_X_KEPT": "yes",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "3",
        "PATH_INFO": "/not-a-header",
    }
    assert request_headers(environ) == {
        "Host": "a.test",
        "X-Kept": "yes",
        "Content-Type": "text/plain",
        "Content-Length": "3",
    }


def test_response_headers_keep_repeats_and_drop_hop_by_hop():
    items = [
        ("Set-Cookie", "a=1"),
        ("Connection", "close, X-Internal"),
        ("X-Internal", "secret"),
        ("Set-Cookie", "b=2"),
        ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"),
        ("Content-Length", "10"),
        ("Date", "upstream's"),
        ("Server", "upstream"),
        ("X-Request-Id", "upstream's"),
    ]
    assert response_headers(items) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "10"),
    ]


def test_forwarded_headers_append_the_client():
    headers = {"X-Forwarded-For": "10.0.0.1", "X-Forwarded-Proto": "https"}
    add_forwarded(headers, client="127.0.0.1", proto="http", host="a.test")
    assert headers == {
        "X-Forwarded-For": "10.0.0.1, 127.0.0.1",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "a.test",
    }
    fresh = {}
    add_forwarded(fresh, client="::1", proto="http", host="b.test")
    assert fresh["X-Forwarded-For"] == "::1"


def test_connection_tokens_are_a_lowercase_list():
    assert connection_tokens(" Close ,X-A,, ") == {"close", "x-a"}
    assert connection_tokens(None) == frozenset()


names = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=20)
values = st.text(alphabet=string.printable.strip() + " ", max_size=30)
hop = st.sampled_from(sorted(HOP_BY_HOP)).map(lambda n: n.upper() if len(n) % 2 else n.title())


@given(st.lists(st.tuples(st.one_of(names, hop), values), max_size=15))
def test_no_hop_by_hop_header_ever_passes_and_others_keep_their_order(items):
    kept = response_headers(items)
    listed = set()
    for name, value in items:
        if name.lower() == "connection":
            listed |= connection_tokens(value)
    dropped = HOP_BY_HOP | REPLACED_BY_PROXY | listed
    assert kept == [(n, v) for n, v in items if n.lower() not in dropped]
    assert not any(name.lower() in HOP_BY_HOP for name, _ in kept)


@given(st.dictionaries(names, values, max_size=15), st.lists(names, max_size=3))
def test_request_filtering_is_the_same_rule_on_environ(headers, listed):
    environ = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    environ["HTTP_CONNECTION"] = ", ".join(listed)
    forwarded = request_headers(environ)
    dropped = HOP_BY_HOP | {name.lower() for name in listed}
    assert not any(name.lower() in dropped for name in forwarded)
    for key, value in environ.items():
        name = header_name(key)
        if name.lower() not in dropped:
            assert forwarded[name] == value
