"""The request parser: what it accepts, what it refuses, and with which status."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http.framing import (
    HeaderFieldsTooLarge,
    HeadLimits,
    ProtocolError,
    RequestLineTooLong,
    UnsupportedTransferCoding,
    UnsupportedVersion,
    chunk_size,
    field_block,
    parse_request_head,
    parse_response_head,
    send_all,
    values_of,
)

LIMITS = HeadLimits(request_line=100, header_count=5, header_size=50)


def parse(*lines: str, limits: HeadLimits = LIMITS):
    """Parse a head; a Host line is added where a 1.1 request would need one."""
    if not any(line.lower().startswith("host:") for line in lines[1:]):
        lines = (lines[0], "Host: t", *lines[1:])
    return parse_request_head("\r\n".join(lines), limits)


def test_values_of_a_name_none_one_or_several_in_order():
    head = parse("GET / HTTP/1.1", "Host: t", "X-A: 1", "Via: v", "x-a: 2", "X-A: 3")
    assert values_of(head, "x-a") == ["1", "2", "3"]
    assert values_of(head, "via") == ["v"]
    assert values_of(head, "host") == ["t"]
    assert values_of(head, "x-b") == []


def test_a_request_with_its_headers_as_sent():
    head = parse("GET /a%7eb?x=%2f HTTP/1.1", "Host: web.test", "X-Two:  a b \t", "x-two: c")
    assert (head.method, head.target, head.version) == ("GET", "/a%7eb?x=%2f", (1, 1))
    assert head.headers == [("Host", "web.test"), ("X-Two", "a b"), ("x-two", "c")]
    assert (head.content_length, head.chunked, head.keep_alive) == (None, False, True)


def test_keep_alive_follows_the_version_and_connection():
    assert parse("GET / HTTP/1.1", "Connection: close").keep_alive is False
    assert parse("GET / HTTP/1.1", "Connection: x, Close").keep_alive is False
    assert parse("GET / HTTP/1.0").keep_alive is False
    assert parse("GET / HTTP/1.0", "Connection: keep-alive").keep_alive is True


def test_body_framing():
    assert parse("POST / HTTP/1.1", "Content-Length: 12").content_length == 12
    assert parse("POST / HTTP/1.1", "Transfer-Encoding: Chunked").chunked is True
    assert parse("POST / HTTP/1.1", "Expect: 100-continue").expect_continue is True
    assert parse("POST / HTTP/1.0", "Expect: 100-continue").expect_continue is False


@pytest.mark.parametrize(
    "lines",
    [
        ["GARBAGE"],
        ["GET / HTTP/1.1 extra"],
        ["GET  / HTTP/1.1"],
        ["GET /\x01 HTTP/1.1"],
        ["GET / HTTP/1.x"],
        ["G(T / HTTP/1.1"],
        ["GET / HTTP/1.1", "X-A : b"],  # space before the colon
        ["GET / HTTP/1.1", "X-A: b", " folded"],  # obsolete line folding
        ["GET / HTTP/1.1", "X-A: a\rb"],
        ["GET / HTTP/1.1", "X-A: a\nX-Injected: 1"],
        ["GET / HTTP/1.1", "X-A: a\x00b"],
        ["GET / HTTP/1.1", "no colon"],
        ["GET / HTTP/1.1", "Host: a", "Host: b"],
        ["POST / HTTP/1.1", "Content-Length: 3", "Content-Length: 3"],
        ["POST / HTTP/1.1", "Content-Length: -1"],
        ["POST / HTTP/1.1", "Content-Length: 1e3"],
        ["POST / HTTP/1.1", "Content-Length: ٣"],  # a digit, but not ASCII
        ["POST / HTTP/1.1", "Content-Length: 6", "Transfer-Encoding: chunked"],
    ],
)
def test_refused_with_400(lines):
    with pytest.raises(ProtocolError) as refused:
        parse(*lines)
    assert refused.value.status == "400 Bad Request"
    assert "Injected" not in str(refused.value)  # an error never quotes the request


def test_refused_with_their_own_status():
    with pytest.raises(RequestLineTooLong):
        parse("GET /" + "a" * 100 + " HTTP/1.1")
    with pytest.raises(HeaderFieldsTooLarge):
        parse("GET / HTTP/1.1", *[f"X-{i}: v" for i in range(6)])
    with pytest.raises(HeaderFieldsTooLarge):
        parse("GET / HTTP/1.1", "X-Big: " + "v" * 50)
    with pytest.raises(UnsupportedTransferCoding):
        parse("POST / HTTP/1.1", "Transfer-Encoding: gzip, chunked")
    with pytest.raises(UnsupportedTransferCoding):
        parse("POST / HTTP/1.1", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked")
    with pytest.raises(UnsupportedVersion) as refused:
        parse("GET / HTTP/2.0")
    assert refused.value.status == "505 HTTP Version Not Supported"
    assert LIMITS.head_size == 100 + 5 * 52 + 4


def test_chunk_size_lines():
    assert chunk_size(b"1f") == 31
    assert chunk_size(b"A;name=value") == 10
    assert chunk_size(b"0") == 0
    for bad in (b"", b"0x10", b"1_0", b"+5", b"g", b"1" * 16, b"5 5"):
        with pytest.raises(ProtocolError):
            chunk_size(bad)


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40))
def test_a_parsed_value_never_holds_cr_lf_or_nul(value):
    try:
        head = parse("GET / HTTP/1.1", f"X-Any: {value}")
    except ProtocolError:
        return
    _, parsed = head.headers[-1]
    assert not set(parsed) & {"\r", "\n", "\x00"}
    assert parsed == value.strip(" \t")


class Trickle:
    """A socket whose send() takes at most 3 bytes at a time."""

    def __init__(self):
        self.data = b""

    def send(self, data) -> int:
        self.data += bytes(data[:3])
        return min(3, len(data))

    def sendall(self, data) -> None:
        while data:
            data = data[self.send(data) :]


def test_send_all_finishes_a_partial_send():
    sock = Trickle()
    send_all(sock, b"0123456789")
    assert sock.data == b"0123456789"


def test_a_field_block_refuses_what_would_split_a_line():
    assert field_block([("A", "1"), ("b-c", "x y")]) == "A: 1\r\nb-c: x y\r\n"
    assert field_block([]) == ""
    for name, value in [("A", "1\r\nB: 2"), ("A", "1\n"), ("A\r", "1"), ("A", "1\x00")]:
        with pytest.raises(ValueError):
            field_block([(name, value)])
    # An empty item would make an empty line, which ends a head: what follows
    # it would be read as a body, or as the next message.
    for fields in ([("A", "1"), (), ("X-Smuggled", "1")], [(), ("A", "1")], [("A", "1"), ""]):
        with pytest.raises(ValueError):
            field_block(fields)


# --- the one-pass field reader against the line-by-line one ----------------

_PIECES = st.sampled_from(
    [
        "Host",
        "X-A",
        "content-length",
        ":",
        ": ",
        " ",
        "\t",
        "\r\n",
        "\n",
        "\r",
        "value",
        "a b",
        "\x00",
        "\x7f",
        "é",
        "(x)",
        "\x1f",
        "\x0b",
        "\x0c",
        "\x80",
        "\xa0",
        "\xff",
        "\r\n\r\n",
    ]
)
_LINE = st.one_of(
    st.builds(
        lambda name, ows1, value, ows2: f"{name}:{ows1}{value}{ows2}",
        st.sampled_from(["Host", "X-Two", "x_y", "A.B", "Content-Length", "ab!#$%&'*+.^`|~"]),
        st.sampled_from(["", " ", "  ", "\t"]),
        st.sampled_from(["", "v", "a b", "é", "x\ty", "1, 2"]),
        st.sampled_from(["", " ", " \t"]),
    ),
    st.lists(_PIECES, max_size=6).map("".join),
)


def _line_by_line(block: str):
    """The reader the fast one falls back to: each line matched on its own."""
    from app.http.framing import _FIELD, _field

    fields = []
    for line in block.split("\r\n"):
        matched = _FIELD.fullmatch(line)
        if matched is None:
            raise ProtocolError("invalid header line")
        fields.append(_field(matched))
    return fields


@given(st.lists(_LINE, min_size=1, max_size=6).map("\r\n".join))
def test_the_one_pass_field_reader_reads_every_block_as_the_line_reader(block):
    from app.http.framing import _fast_fields

    fast = _fast_fields(block)
    if fast is None:
        return  # the line reader decides (the request path takes it then)
    fields, names, lines = fast
    assert fields == _line_by_line(block)
    assert names == [name.lower() for name, _ in fields]
    assert lines == block.split("\r\n")


def test_the_one_pass_reader_leaves_every_doubtful_block_to_the_line_reader():
    from app.http.framing import _fast_fields

    assert _fast_fields("Host: a\r\nX: b") == (
        [("Host", "a"), ("X", "b")],
        ["host", "x"],
        ["Host: a", "X: b"],
    )
    assert _fast_fields("Host: a\r\nX: b  ")[:2] == ([("Host", "a"), ("X", "b")], ["host", "x"])
    for block in (
        "Host: a\nX: b",  # a bare LF
        "Host: a\rX: b",  # a bare CR
        "Host: a\n\rX: b",  # LF CR
        "Host: a\r\r\nX: b",  # a CR before the CRLF
        "Host: a\r\n\r\nX: b",  # an empty line
        "Host: a\r\n",  # a CRLF at the end
        "Host: a\r\n folded",  # an obsolete fold
        "Host: a\r\nbad line X: b",  # a line that is no field
        "Transfer-Encoding: chunked\t",  # a tab (refused in framing fields)
        "Host : a",  # space before the colon
        "Host: a\r\nX: caf\xe9",  # obs-text (the line reader passes it)
        "Host: a\r\nX: b\x00",  # a control character
        "Host: a\r\nX: b\x7f",  # DEL
        "Host: a\r\n: b",  # no name
        "Host: a\r\nX b",  # no colon
        "Host: a\r\nX\\: b",  # a name that is no token
    ):
        assert _fast_fields(block) is None, block
    assert _fast_fields("X: " + "a" * 60, line_limit=50) is None  # the limit is the line reader's


def test_the_names_the_one_pass_reader_remembers_are_short_and_bounded(monkeypatch):
    from app.http import framing

    monkeypatch.setattr(framing, "_NAMES_SEEN", {})
    monkeypatch.setattr(framing, "_NAMES_SEEN_MAX", 2)
    long_name = "X-" + "a" * framing._NAMES_SEEN_LONGEST
    _, names, _ = framing._fast_fields(f"A: 1\r\n{long_name}: 2\r\nB: 3")
    assert names == ["a", long_name.lower(), "b"]
    assert framing._NAMES_SEEN == {"A": "a", "B": "b"}  # the long one not kept
    _, names, _ = framing._fast_fields("C: 4\r\nA: 5")  # the table is full: it starts again
    assert names == ["c", "a"] and framing._NAMES_SEEN == {"C": "c", "A": "a"}
    assert framing._fast_fields("A: 5\r\nc: 6")[:2] == ([("A", "5"), ("c", "6")], ["a", "c"])


@given(st.lists(st.sampled_from(["Host", "X-A", "CONTENT-length", "Ünï", "a-B"]), max_size=5))
def test_lower_names_are_the_names_lower_cased(names):
    from app.http.framing import lower_names

    assert lower_names([(name, "v") for name in names]) == [name.lower() for name in names]


def test_a_value_ending_in_spaces_is_read_without_them():
    head = parse("GET / HTTP/1.1", "X-A:   a b  ", "X-B:    ")
    assert head.headers[1:] == [("X-A", "a b"), ("X-B", "")]


@pytest.mark.parametrize(
    "value", [" " * 60_000 + "\x01", "a" + " " * 60_000 + "\x01", "a " * 30_000 + "\x01"]
)
def test_a_long_bad_line_is_refused_without_backtracking(value):
    # A guard against catastrophic backtracking, not a speed measurement: the
    # lazy pattern this replaced took minutes on the first value (its time grew
    # with the cube of the line); a linear scan takes about a millisecond.
    started = time.perf_counter()
    with pytest.raises(ProtocolError):
        parse_response_head(f"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX:{value}", "GET")
    with pytest.raises(ProtocolError):
        parse_request_head(
            f"GET / HTTP/1.1\r\nHost: a\r\nX:{value}", HeadLimits(100, 100_000, 100_000)
        )
    assert time.perf_counter() - started < 2


def test_connection_tokens_are_remembered_only_for_short_values():
    from app.http import framing

    long_value = ", ".join(f"option-{n}" for n in range(20))
    assert len(long_value) > framing._TOKENS_SEEN_LONGEST
    assert framing.connection_tokens(long_value) == {f"option-{n}" for n in range(20)}
    assert long_value not in framing._TOKENS_SEEN
    framing.connection_tokens("Keep-Alive")
    assert "Keep-Alive" in framing._TOKENS_SEEN


def test_connection_tokens_are_remembered_for_a_bounded_number_of_values():
    from app.http import framing

    assert framing.connection_tokens("Keep-Alive, Upgrade") == {"keep-alive", "upgrade"}
    for n in range(framing._TOKENS_SEEN_MAX + 10):
        assert framing.connection_tokens(f"x{n}") == {f"x{n}"}
    assert len(framing._TOKENS_SEEN) <= framing._TOKENS_SEEN_MAX


def test_a_request_with_many_fields_takes_the_same_path_to_the_same_head():
    fields = [f"X-{n}: {n}" for n in range(4)]
    fast = parse("GET / HTTP/1.1", *fields)
    slow = parse("GET / HTTP/1.1", *fields[:3], "X-3:\t3")  # a tab: the line reader
    assert fast.headers == slow.headers
    assert fast.names == ["host", "x-0", "x-1", "x-2", "x-3"]
