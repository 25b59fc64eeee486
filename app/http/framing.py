"""HTTP/1.1 framing for both sides of the proxy (RFC 9112): where a message ends.

A proxy is shared by strangers: wherever it and a peer could disagree about
where a message ends, one client's bytes could reach another. So both
directions go through the same strict rules, and any doubt ends the
connection:

- heads: a request line ``token SP target SP HTTP/1.x``, a status line
  ``HTTP/1.x SP 3DIGIT [SP reason]``, header lines ``token ":" OWS value OWS``
  with no control character but HTAB anywhere (a bare CR or LF included);
- Content-Length: ASCII digits only, once (or repeated identical values,
  collapsed); Transfer-Encoding: ``chunked`` alone; a request with both is
  refused, a response with both is framed by the chunks;
- bodies are read by small readers (``LengthReader``, ``ChunkedReader``,
  ``UntilCloseReader``), each of which knows exactly where its body ends: a
  chunk size is hex digits, chunk data is followed by CRLF, trailer lines are
  fields that never carry framing, and end-of-file before the end is an
  error, never a clean end;
- the no-body rule (HEAD, 1xx, 204, 304) is ``response_has_body``.

Errors are types (``ProtocolError`` and its subclasses), each with the status a
client gets when it broke the rules; a message never quotes the input (an
error page must not reflect it). On the upstream side every ProtocolError
becomes a 502 (app/errors.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# --- errors ----------------------------------------------------------------


class ProtocolError(Exception):
    """A peer broke HTTP/1.1: the connection ends after ``status`` (a client's fault)."""

    status = "400 Bad Request"


class RequestLineTooLong(ProtocolError):
    status = "414 URI Too Long"


class HeaderFieldsTooLarge(ProtocolError):
    status = "431 Request Header Fields Too Large"


class ContentTooLarge(ProtocolError):
    status = "413 Content Too Large"


class UnsupportedTransferCoding(ProtocolError):
    status = "501 Not Implemented"


class UnsupportedVersion(ProtocolError):
    status = "505 HTTP Version Not Supported"


class IncompleteMessage(ProtocolError):
    """The peer closed before the end of the message it announced."""


# --- fields ----------------------------------------------------------------

# RFC 9110 §5.6.2 token; a target of printable ASCII (RFC 3986 has no other bytes).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
# RFC 9112 §4: the reason is HTAB / SP / VCHAR / obs-text; it may be empty, or
# left out with its space (as h11 and llhttp accept).
_STATUS_LINE = re.compile(r"HTTP/1\.(\d) ([1-5]\d\d)(?: ([\t\x20-\x7e\x80-\xff]*))?")
# RFC 9110 §5.5: value = VCHAR / obs-text, with SP and HTAB inside; OWS around it.
_FIELD = re.compile(rf"({_TOKEN}):([\t\x20-\x7e\x80-\xff]*)")
_OWS = " \t"
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")

_FRAMING_FIELDS = frozenset({"content-length", "transfer-encoding"})
_REQUEST_FRAMING_FIELDS = _FRAMING_FIELDS | {"connection", "expect"}
# Fields that must never come in trailers (RFC 9110 §6.5.1): they frame or route.
_NOT_IN_TRAILERS = frozenset({"content-length", "transfer-encoding", "host", "trailer"})


def connection_tokens(value: str | None) -> frozenset[str]:
    """The options a ``Connection`` header value lists, lower-cased."""
    if not value:
        return frozenset()
    tokens = _TOKENS_SEEN.get(value)
    if tokens is None:
        tokens = frozenset(token.strip().lower() for token in value.split(",") if token.strip())
        # A few short values recur (keep-alive, close, Upgrade): only those are
        # kept, or a client could park 256 header-sized values in every worker.
        if len(value) <= _TOKENS_SEEN_LONGEST and len(_TOKENS_SEEN) < _TOKENS_SEEN_MAX:
            _TOKENS_SEEN[value] = tokens
    return tokens


_TOKENS_SEEN: dict[str, frozenset[str]] = {}
_TOKENS_SEEN_MAX = 256
_TOKENS_SEEN_LONGEST = 64


def field_block(fields: Iterable[tuple[str, str]]) -> str:
    """``name: value\r\n`` lines, for a request or a response head.

    ValueError if a CR, LF or NUL inside a name or value would split a line
    (header injection): the one check both directions go through. Each item
    must unpack to (name, value): an empty one cannot make an empty line,
    which would end the head there.
    """
    lines = [f"{name}: {value}\r\n" for name, value in fields]
    block = "".join(lines)
    if block.count("\n") != len(lines) or block.count("\r") != len(lines) or "\x00" in block:
        raise ValueError("CR, LF or NUL in a header")
    return block


class RenderedFields(list):
    """Header fields whose ``name: value`` lines are made already (``block``,
    each line ending in CRLF), with their names lower-cased (``names``) and
    their one Content-Length read (``length``, or None).

    The HTTP server writes ``block`` instead of making the lines again, as
    long as the list still holds what it was made with (``intact``): a list
    changed since (a header added, one replaced) is written as any other.
    Made by app/upstream/response.client_headers from a response head's own lines; ``block``
    must hold exactly these fields, no CR, LF or NUL inside a line, and none
    of the fields the server decides (Connection, Transfer-Encoding, Keep-Alive).
    """

    __slots__ = ("_made_of", "block", "length", "names")

    def __init__(self, fields: list[tuple[str, str]], names: list[str], block: str, length):
        super().__init__(fields)
        self._made_of = tuple(fields)
        self.names = names
        self.block = block
        self.length = length

    def intact(self) -> bool:
        """The fields are still those ``block`` was made of."""
        return tuple(self) == self._made_of


def content_length(values: list[str]) -> int:
    """The body length that the Content-Length fields say, RFC 9110 §8.6.

    Digits only (``int()`` would take ``+42``, `` 42``, ``4_2`` and other
    scripts' digits); several fields, or a list in one, must all be the same
    number, which is then taken once.
    """
    if len(values) == 1 and (number := values[0]).isdigit() and number.isascii():
        if len(number) > 18:
            raise ProtocolError("invalid Content-Length")
        return int(number)  # the usual case: one field, digits only
    numbers = {item.strip(" \t") for value in values for item in value.split(",")}
    if len(numbers) != 1:
        raise ProtocolError("conflicting Content-Length values")
    number = numbers.pop()
    if not (number.isascii() and number.isdigit()) or len(number) > 18:
        raise ProtocolError("invalid Content-Length")
    return int(number)


def response_has_body(method: str, status: int) -> bool:
    """The no-body rule, RFC 9112 §6.3: HEAD, 1xx, 204 and 304 end at their head."""
    return not (method == "HEAD" or status < 200 or status == 204 or status == 304)


# --- heads -----------------------------------------------------------------


@dataclass(frozen=True)
class HeadLimits:
    """The most a request head may take (proxy.yaml ``limits``, gunicorn's limit_request_*)."""

    request_line: int
    header_count: int
    header_size: int

    @property
    def head_size(self) -> int:
        """The most a request head can take before it must be refused."""
        return self.request_line + self.header_count * (self.header_size + 2) + 4


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str  # as sent, byte for byte
    version: tuple[int, int]
    headers: list[tuple[str, str]]  # as sent, in order
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    expect_continue: bool = False
    host: str | None = None  # the Host header
    path: str = "/"  # origin-form target: path and query
    authority: str | None = None  # of an absolute-form target, which replaces Host
    names: list[str] = field(default_factory=list)  # the headers' names, lower-cased


@dataclass(slots=True)
class ResponseHead:
    version: tuple[int, int]
    status: int
    reason: str
    headers: list[tuple[str, str]]  # as sent, in order (obsolete folding joined)
    # The Content-Length, checked and collapsed to one; None when there is
    # none, or when the body is chunked (which overrides it).
    content_length: int | None = None
    chunked: bool = False
    has_body: bool = True  # False: the no-body rule (HEAD, 1xx, 204, 304)
    keep_alive: bool = True
    names: list[str] = field(default_factory=list)  # the headers' names, lower-cased
    # The field lines as received (``name: value``, OWS kept), one per header,
    # when the one-pass reader read the head (``_fast_fields``); None otherwise.
    lines: list[str] | None = None

    @property
    def interim(self) -> bool:
        """A 1xx that another response follows (101 switches protocols instead)."""
        return self.status < 200 and self.status != 101


def parse_request_head(text: str, limits: HeadLimits) -> RequestHead:
    """The head of one request (latin-1 text without its final CRLF CRLF)."""
    first, _, block = text.partition("\r\n")
    method, target, version = _request_line(first, limits)
    parsed = _fast_fields(block, limits.header_size) if block else ([], [], [])
    if parsed is None:
        lines = block.split("\r\n")
        if len(lines) > limits.header_count:
            raise HeaderFieldsTooLarge(f"more than {limits.header_count} header fields")
        headers = []
        for line in lines:
            if len(line) > limits.header_size:
                raise HeaderFieldsTooLarge(f"a header line over {limits.header_size} bytes")
            matched = _FIELD.fullmatch(line)
            if matched is None:
                raise ProtocolError("invalid header line")
            headers.append(_field(matched))
        names = lower_names(headers)
    else:
        headers, names, _ = parsed
        if len(headers) > limits.header_count:
            raise HeaderFieldsTooLarge(f"more than {limits.header_count} header fields")
    head = RequestHead(method, target, version, headers)
    head.names = names
    head.path, head.authority = split_target(target)
    _request_framing(head)
    return head


def _request_line(line: str, limits: HeadLimits) -> tuple[str, str, tuple[int, int]]:
    if len(line) > limits.request_line:
        raise RequestLineTooLong(f"request line over {limits.request_line} bytes")
    parts = _REQUEST_LINE.fullmatch(line)
    if parts is None:
        raise ProtocolError("invalid request line")
    version = (int(parts[3]), int(parts[4]))
    if version[0] != 1:
        raise UnsupportedVersion(f"HTTP/{version[0]}.{version[1]}")
    return parts[1], parts[2], version


def _request_framing(head: RequestHead) -> None:
    """Body length, keep-alive, Host and Expect, from the headers that decide them."""
    hosts = values_of(head, "host")
    lengths = codings = []
    connection = ""
    if not _REQUEST_FRAMING_FIELDS.isdisjoint(head.names):  # else only Host matters
        lengths = values_of(head, "content-length")
        codings = values_of(head, "transfer-encoding")
        connection = ",".join(values_of(head, "connection"))
        if any(value.lower() == "100-continue" for value in values_of(head, "expect")):
            head.expect_continue = head.version >= (1, 1)
    if len(hosts) > 1:
        raise ProtocolError("more than one Host header")
    head.host = hosts[0] if hosts else None
    # RFC 9112 §3.2: every HTTP/1.1 request has a Host, absolute-form or not.
    if head.host is None and head.version >= (1, 1):
        raise ProtocolError("missing Host header")
    if codings:
        if lengths:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        if len(codings) > 1 or codings[0].lower() != "chunked":
            raise UnsupportedTransferCoding("Transfer-Encoding other than chunked")
        head.chunked = True
    elif lengths:
        if len(lengths) > 1:
            raise ProtocolError("more than one Content-Length")
        head.content_length = content_length(lengths)
    head.keep_alive = _keep_alive(head.version, connection)
    # RFC 9112 §6.1: HTTP/1.0 with Transfer-Encoding is faulty framing: serve, then close.
    if head.chunked and head.version < (1, 1):
        head.keep_alive = False


def split_target(target: str) -> tuple[str, str | None]:
    """(origin-form target, authority) of a request target, RFC 9112 §3.2.

    Origin-form (``/a?b``) and asterisk-form (``*``) come back unchanged with no
    authority; absolute-form ``http://host:port/a?b`` gives ``/a?b`` and
    ``host:port``. A target that is neither is refused.
    """
    if target.startswith("/") or target == "*":
        return target, None
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ProtocolError("invalid request target")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if not authority or "@" in authority:
        raise ProtocolError("invalid authority in absolute-form request target")
    if path.startswith("?"):
        path = "/" + path
    return path or "/", authority


def parse_response_head(text: str, method: str) -> ResponseHead:
    """The head of one response (latin-1 text without its final CRLF CRLF).

    ``method`` is the request's: a response to HEAD has no body.
    """
    first, _, block = text.partition("\r\n")
    status_line = _STATUS_LINE.fullmatch(first)
    if status_line is None:
        raise ProtocolError("invalid status line")
    version = (1, int(status_line[1]))
    parsed = _fast_fields(block) if block else ([], [], [])
    lines = None
    if parsed is None:
        fields = _fields(block.split("\r\n"))
        names = lower_names(fields)
    else:
        fields, names, lines = parsed
    head = ResponseHead(version, int(status_line[2]), status_line[3] or "", fields)
    head.names = names
    head.lines = lines
    _response_framing(head, method)
    return head


_CONTROLS = bytes(range(0x20)) + b"\x7f"  # what printable ASCII leaves out


def _fast_fields(
    block: str, line_limit: int | None = None
) -> tuple[list[tuple[str, str]], list[str], list[str]] | None:
    """The (name, value) fields of a head's header lines, their names
    lower-cased and the lines themselves, read with string methods (C loops);
    None when a line needs the line-by-line reader, which then decides: a byte
    outside printable ASCII (a control character, a tab, obs-text, a bare CR or
    LF), a line that is no ``token ":" value`` (an obsolete fold among them), or
    a block longer than ``line_limit``, where one of its lines may be.

    A regular expression over the block did this before; the ``re`` engine
    costs a few dozen machine instructions a character, these string methods a
    few (docs/bench.md, "Instructions per request").
    """
    if not block.isascii() or (line_limit is not None and len(block) > line_limit):
        return None
    lines = block.split("\r\n")
    # SP to ~ only: with every control character (CR, LF, HTAB, NUL, DEL...)
    # deleted, the block is short by its CRLF separators and nothing more.
    # (bytes.translate is a plain C loop; str.isprintable, a Unicode lookup a character.)
    if len(block.encode("ascii").translate(None, _CONTROLS)) != len(block) - 2 * len(lines) + 2:
        return None
    fields = []
    names = []
    seen = _NAMES_SEEN
    for line in lines:
        name, colon, value = line.partition(":")
        lower = seen.get(name) or _token_lower(name)
        if lower is None or not colon:
            return None
        fields.append((name, value.strip(" ")))  # OWS; tabs never come this way
        names.append(lower)
    return fields, names, lines


# Valid field names seen, lower-cased: heads repeat a few names, each then
# checked and lower-cased once per worker. Short names only, and so many, or a
# client could park header-sized names in every worker; a full table starts
# again, so that junk names cannot keep the common ones out for good.
_NAMES_SEEN: dict[str, str] = {}
_NAMES_SEEN_MAX = 512
_NAMES_SEEN_LONGEST = 64
_TOKEN_NAME = re.compile(_TOKEN)


def _token_lower(name: str) -> str | None:
    """``name`` lower-cased if it is a token (RFC 9110 §5.6.2), else None."""
    if _TOKEN_NAME.fullmatch(name) is None:
        return None
    lower = name.lower()
    if len(name) <= _NAMES_SEEN_LONGEST:
        if len(_NAMES_SEEN) >= _NAMES_SEEN_MAX:
            _NAMES_SEEN.clear()
        _NAMES_SEEN[name] = lower
    return lower


def lower_names(fields: list[tuple[str, str]]) -> list[str]:
    """The fields' names, lower-cased, in their order (those seen before, from
    the names the head reader keeps)."""
    seen = _NAMES_SEEN
    return [seen.get(name) or name.lower() for name, _ in fields]


def _fields(lines: list[str]) -> list[tuple[str, str]]:
    """Response header lines as (name, value); obsolete folding is joined with a
    space, as RFC 9112 §5.2 lets a proxy do."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and fields:
            if not _FIELD_VALUE.fullmatch(line):
                raise ProtocolError("invalid header line")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip(_OWS)}".strip(" "))
            continue
        matched = _FIELD.fullmatch(line)
        if matched is None:
            raise ProtocolError("invalid header line")
        fields.append(_field(matched))
    return fields


def _field(field: re.Match) -> tuple[str, str]:
    """(name, value) of a matched field line, the value without its OWS.

    A tab in a framing field is refused: llhttp does not strip it
    (``chunked\t`` is not chunked there), and a proxy must never frame a
    message otherwise than a parser on either side of it could.
    """
    name, value = field[1], field[2]
    if "\t" in value and name.lower() in _FRAMING_FIELDS:
        raise ProtocolError("a tab in a framing header")
    return name, value.strip(_OWS)


def _response_framing(head: ResponseHead, method: str) -> None:
    """RFC 9112 §6.3, in its order: no body, chunked, Content-Length, until close."""
    names, fields = head.names, head.headers
    lengths = field_values(names, fields, "content-length")
    codings: list[str] = []  # (list scans in C: most responses have no Transfer-Encoding)
    connection = ""
    if "transfer-encoding" in names:
        codings = field_values(names, fields, "transfer-encoding")
    if "connection" in names:
        connection = ",".join(field_values(names, fields, "connection"))
    head.keep_alive = _keep_alive(head.version, connection)
    head.has_body = response_has_body(method, head.status)
    if codings:
        # Only "chunked" is understood (as nginx); HTTP/1.0 has no chunked at all.
        tokens = [t.strip(_OWS).lower() for value in codings for t in value.split(",")]
        if tokens != ["chunked"] or head.version < (1, 1):
            raise ProtocolError("unsupported Transfer-Encoding in a response")
    if lengths:
        # Checked even where it frames nothing: chunked overrides it (then it
        # is dropped), and on HEAD or 304 it is what a GET would get.
        head.content_length = content_length(lengths)
    if codings:
        head.chunked = head.has_body
        head.content_length = None
    elif lengths:
        pass
    elif head.has_body:
        head.keep_alive = False  # the body ends when the connection does


def values_of(head: RequestHead | ResponseHead, name: str) -> list[str]:
    """The values of every field called ``name`` (lower-case), in their order."""
    return field_values(head.names, head.headers, name)


def field_values(names: list[str], fields: list[tuple[str, str]], name: str) -> list[str]:
    """The values of the ``fields`` called ``name`` (lower-case), in their order;
    ``names``: the fields' names lower-cased (``lower_names``)."""
    count = names.count(name)  # list scans in C: most names come once or not at all
    if count == 0:
        return []
    if count == 1:
        return [fields[names.index(name)][1]]
    return [value for key, (_, value) in zip(names, fields, strict=True) if key == name]


def _keep_alive(version: tuple[int, int], connection: str) -> bool:
    tokens = connection_tokens(connection)
    if version >= (1, 1):
        return "close" not in tokens
    return "keep-alive" in tokens and "close" not in tokens


# --- bodies ----------------------------------------------------------------

RECV_SIZE = 64 * 1024
_MAX_CHUNK_LINE = 1024


class Stream:
    """A socket and the bytes received on it but not consumed yet.

    ``recv`` is the socket's, or a wrapper that bounds it by a deadline.
    """

    __slots__ = ("pending", "recv")

    def __init__(self, recv):
        self.recv = recv
        self.pending = b""

    def read_some(self, size: int) -> bytes:
        """Up to ``size`` (> 0) bytes, at least one; IncompleteMessage at end-of-file."""
        if not self.pending:
            self.pending = self.recv(RECV_SIZE)
            if not self.pending:
                raise IncompleteMessage("the peer closed before the end of the body")
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def read_eof(self, size: int) -> bytes:
        """Up to ``size`` (> 0) bytes; b"" at end-of-file."""
        if not self.pending:
            self.pending = self.recv(RECV_SIZE)
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def read_crlf(self) -> None:
        """The CRLF that must come next (after chunk data)."""
        while len(self.pending) < 2:
            received = self.recv(RECV_SIZE)
            if not received:
                raise IncompleteMessage("the peer closed inside a chunked body")
            self.pending += received
        if self.pending[:2] != b"\r\n":
            raise ProtocolError("chunk data not followed by CRLF")
        self.pending = self.pending[2:]

    def read_line(self, limit: int) -> bytes:
        """One CRLF-terminated line, without its CRLF; ProtocolError past ``limit``."""
        searched = 0
        while (end := self.pending.find(b"\r\n", searched)) < 0:
            if len(self.pending) > limit:
                raise ProtocolError("line too long")
            searched = max(0, len(self.pending) - 1)
            received = self.recv(RECV_SIZE)
            if not received:
                raise IncompleteMessage("the peer closed inside a chunked body")
            self.pending += received
        if end > limit:
            raise ProtocolError("line too long")
        line, self.pending = self.pending[:end], self.pending[end + 2 :]
        return line


class LengthReader:
    """A body of ``length`` bytes."""

    __slots__ = ("remaining",)

    def __init__(self, length: int):
        self.remaining = length

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def read(self, stream: Stream, size: int) -> bytes:
        """The next bytes of the body, at most ``size``; b"" at its end."""
        if self.remaining == 0:
            return b""
        data = stream.read_some(min(size, self.remaining))
        self.remaining -= len(data)
        return data


class ChunkedReader:
    """A chunked body (RFC 9112 §7.1), de-chunked; trailer fields are checked, then dropped.

    ``max_size``: ContentTooLarge as soon as the chunk sizes announce more.
    """

    __slots__ = ("chunk_left", "done", "max_fields", "max_line", "max_size", "total")

    def __init__(self, max_fields: int = 100, max_line: int = 8190, max_size: int | None = None):
        self.chunk_left = 0
        self.done = False
        self.total = 0
        self.max_fields = max_fields
        self.max_line = max_line
        self.max_size = max_size

    def read(self, stream: Stream, size: int) -> bytes:
        if self.done:
            return b""
        if self.chunk_left == 0:
            self.chunk_left = chunk_size(stream.read_line(_MAX_CHUNK_LINE))
            self.total += self.chunk_left
            if self.max_size is not None and self.total > self.max_size:
                raise ContentTooLarge(f"chunked body over {self.max_size} bytes")
            if self.chunk_left == 0:
                self._trailers(stream)
                return b""
        data = stream.read_some(min(size, self.chunk_left))
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            stream.read_crlf()
        return data

    def _trailers(self, stream: Stream) -> None:
        """Trailer fields are read as fields, then dropped (a proxy may: RFC 9110 §6.5.1)."""
        for _ in range(self.max_fields + 1):
            line = stream.read_line(self.max_line).decode("latin-1")
            if not line:
                self.done = True
                return
            matched = _FIELD.fullmatch(line)
            if matched is None:
                raise ProtocolError("invalid trailer line")
            if matched[1].lower() in _NOT_IN_TRAILERS:
                raise ProtocolError("a framing field in the trailers")
        raise HeaderFieldsTooLarge("too many trailer fields")


class UntilCloseReader:
    """A response body that ends when the upstream closes (no length given)."""

    __slots__ = ("done",)

    def __init__(self):
        self.done = False

    def read(self, stream: Stream, size: int) -> bytes:
        if self.done:
            return b""
        data = stream.read_eof(size)
        self.done = not data
        return data


NO_BODY = LengthReader(0)


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions ignored), RFC 9112 §7.1."""
    parsed = _CHUNK_SIZE.fullmatch(line)
    if parsed is None:
        raise ProtocolError("invalid chunk size line")
    return int(parsed[1], 16)


def response_reader(head: ResponseHead, max_fields: int = 100, max_line: int = 8190):
    """The reader that finds the end of this response's body."""
    if not head.has_body or head.content_length == 0:
        return NO_BODY
    if head.chunked:
        return ChunkedReader(max_fields, max_line)
    if head.content_length is not None:
        return LengthReader(head.content_length)
    return UntilCloseReader()


# --- writing ---------------------------------------------------------------

LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (never the last: data is not empty)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def send_all(sock, data: bytes) -> None:
    """``sock.sendall(data)`` in one send() as a rule: gevent's sendall() adds a
    getsockopt() syscall each time, a tenth of a small response's cost."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
