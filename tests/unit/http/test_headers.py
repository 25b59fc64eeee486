"""Hop-by-hop filtering in both directions, and the X-Forwarded-* headers."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http.framing import connection_tokens
from app.http.headers import (
    HOP_BY_HOP,
    REPLACED_BY_PROXY,
    SET_BY_PROXY,
    environ_fields,
    header_name,
    response_headers,
    upstream_headers,
)


def test_environ_keys_become_header_names():
    assert header_name("HTTP_X_REQUEST_ID") == "X-Request-Id"
    assert header_name("HTTP_HOST") == "Host"


def test_request_headers_drop_hop_by_hop_and_connection_listed_names():
    fields = [
        ("Host", "client.test"),
        ("Connection", "keep-alive, X-Secret ,Foo"),
        ("X-Secret", "1"),
        ("Foo", "2"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Sum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("X-Kept", "yes"),
        ("Cookie", "a=1"),
        ("cookie", "b=2"),
        ("Content-Type", "text/plain"),
        ("Content-Length", "3"),
        ("X_Underscore", "dropped"),
        ("X-Request-Id", "client's"),
    ]
    assert upstream_headers(fields, "a.test", "192.0.2.1", "http", "rid") == [
        ("Host", "a.test"),
        ("X-Kept", "yes"),
        ("Cookie", "a=1"),
        ("cookie", "b=2"),
        ("Content-Type", "text/plain"),
        ("X-Forwarded-For", "192.0.2.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "a.test"),
        ("X-Request-Id", "rid"),
    ]


def test_environ_fields_rebuild_the_names():
    environ = {"HTTP_X_A": "1", "CONTENT_TYPE": "t", "CONTENT_LENGTH": "3", "PATH_INFO": "/"}
    assert environ_fields(environ) == [("X-A", "1"), ("Content-Type", "t"), ("Content-Length", "3")]


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
    fields = [
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Proto", "https"),
        ("x-forwarded-for", "10.0.0.2"),
    ]
    headers = upstream_headers(fields, "a.test", client="127.0.0.1", proto="http")
    assert headers == [
        ("Host", "a.test"),
        ("X-Forwarded-For", "10.0.0.1, 10.0.0.2, 127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "a.test"),
    ]
    fresh = upstream_headers([], "b.test", client="::1", proto="http")
    assert ("X-Forwarded-For", "::1") in fresh


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


@given(st.lists(st.tuples(st.one_of(names, hop), values), max_size=15), st.lists(names, max_size=3))
def test_request_filtering_keeps_every_end_to_end_field_in_order(fields, listed):
    fields = [*fields, ("Connection", ", ".join(listed))]
    forwarded = upstream_headers(fields, "a.test", "192.0.2.1", "http")
    dropped = HOP_BY_HOP | SET_BY_PROXY | {name.lower() for name in listed}
    for name, value in fields:
        if name.lower() == "connection":
            dropped |= connection_tokens(value)
    assert forwarded[1:-3] == [(n, v) for n, v in fields if n.lower() not in dropped]
    assert not any(name.lower() in HOP_BY_HOP for name, _ in forwarded)


def test_names_that_are_not_the_fields_own_are_refused():
    fields = [("A", "1"), ("B", "2")]
    with pytest.raises(ValueError):
        response_headers(fields, ["a"])
    with pytest.raises(ValueError):
        upstream_headers(fields, host="h", client="c", proto="http", names=["a", "b", "c"])
