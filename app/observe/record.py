"""What one request did: filled in step by step, read by metrics and the access log.

app/wsgi.py makes one per request and hands it to app/observe/end.py when the
request is over, whatever path it took.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field

# A client's X-Request-ID is kept if it is short and printable; else we make one.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")


def request_id(offered: str | None) -> str:
    """The client's id if usable, else 128 random bits in hex.

    An id must be unique, not secret: ``random`` (reseeded in each forked
    worker) is a fifth of the cost of ``os.urandom``'s syscall.
    """
    if offered and _REQUEST_ID.fullmatch(offered):
        return offered
    return "%032x" % random.getrandbits(128)  # noqa: UP031 (an f-string's spec costs more)


@dataclass(slots=True)
class Record:
    request_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    wall_time: float = field(default_factory=time.time)
    service: str | None = None
    upstream: str | None = None  # host:port of the last host tried
    outcome: str = "success"  # or the error kind (app/errors.py)
    upstream_status: int | None = None
    status: int | None = None
    connect_time: float | None = None  # None: a pooled connection was reused
    upstream_time: float | None = None  # until the upstream's response headers
    retries: int = 0
    tunnel_close: str | None = None  # a tunnel's end: client, upstream, idle, shutdown
    bytes_in: int = 0
    bytes_out: int = 0
    finished: float | None = None

    def finish(self) -> None:
        if self.finished is None:
            self.finished = time.perf_counter()

    @property
    def duration(self) -> float:
        return (self.finished or time.perf_counter()) - self.started


class Ended:
    """Ended requests of one kind (one service, host, status and outcome): their
    count, sums and times, for the metrics (``group``)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connect_times",
        "count",
        "durations",
        "outcome",
        "retries",
        "service",
        "status",
        "upstream",
        "upstream_times",
    )

    def __init__(self, key: tuple, records: list[Record], now: float):
        self.service, self.upstream, self.status, self.outcome = key
        self.count = len(records)
        # Seconds, in the order the requests ended; the other times only where
        # taken (None: no upstream answered, or a pooled connection was reused).
        # (Record.duration inlined, with one clock read for the lot: a property
        # call per request costs more than the subtraction.)
        self.durations = [(record.finished or now) - record.started for record in records]
        self.upstream_times = [r.upstream_time for r in records if r.upstream_time is not None]
        self.connect_times = [r.connect_time for r in records if r.connect_time is not None]
        # (``or 0``: a count that was never set cannot fail the kind's sums.)
        self.bytes_in = sum([record.bytes_in or 0 for record in records])
        self.bytes_out = sum([record.bytes_out or 0 for record in records])
        self.retries = sum([record.retries or 0 for record in records])


def group(records: list[Record]) -> list[Ended]:
    """``records`` by kind, in the order each kind first ended.

    The metrics count a batch of requests a kind at a time: a batch is mostly
    one or two kinds, so what a request costs them is a few list items, not
    its own round of counter updates and formatting.
    """
    kinds: dict[tuple, list[Record]] = {}
    for record in records:
        key = (record.service, record.upstream, record.status, record.outcome)
        same = kinds.get(key)
        if same is None:
            kinds[key] = [record]
        else:
            same.append(record)
    now = time.perf_counter()
    return [Ended(key, same, now) for key, same in kinds.items()]
