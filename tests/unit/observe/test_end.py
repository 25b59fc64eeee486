"""The end of a request: handed on at once, or in batches in a worker."""

from __future__ import annotations

import logging

from app.observe.end import RequestEnd
from app.observe.record import Record


class Counted:
    """What the end hands records to: metrics (requests_done, tunnel_closed)."""

    def __init__(self):
        self.done: list[str] = []
        self.batches: list[int] = []  # records per requests_done call
        self.tunnels: list[str] = []

    def requests_done(self, records: list[Record]) -> None:
        self.done.extend(record.request_id for record in records)
        self.batches.append(len(records))

    def tunnel_closed(self, record: Record) -> None:
        self.tunnels.append(record.request_id)


def ended(end: RequestEnd, request_id: str, tunnel: str | None = None) -> Record:
    record = Record(request_id)
    record.tunnel_close = tunnel
    end(record, {"REMOTE_ADDR": "10.0.0.1", "RAW_URI": "/a", "HTTP_COOKIE": "secret"})
    return record


def test_one_at_a_time_each_record_is_handed_on_as_it_ends_and_only_once():
    metrics, lines = Counted(), []
    end = RequestEnd(metrics, lambda batch: lines.extend(record.request_id for record, _ in batch))
    record = ended(end, "a")
    end(record, {})  # a second close
    assert metrics.done == lines == ["a"] and record.finished is not None


def test_in_batches_records_wait_for_a_full_batch_or_a_drain_and_keep_their_times():
    metrics, lines = Counted(), []
    end = RequestEnd(metrics, lambda batch: lines.extend((r.request_id, env) for r, env in batch))
    end.batch = 3
    first = ended(end, "a")
    finished = first.finished
    ended(end, "b", tunnel="client")
    assert metrics.done == [] and lines == [] and finished is not None  # ended, not handed on
    ended(end, "c")  # the batch is full
    assert metrics.done == ["a", "b", "c"] and metrics.tunnels == ["b"]
    assert metrics.batches == [3]  # counted together
    assert [request_id for request_id, _ in lines] == ["a", "b", "c"]
    assert lines[0][1] == {  # what the line reads
        "REMOTE_ADDR": "10.0.0.1", "REQUEST_METHOD": None, "RAW_URI": "/a", "HTTP_HOST": None,
    }  # fmt: skip
    assert first.finished == finished and end.pending == []
    ended(end, "d")
    end.drain()  # each second, and at the worker's exit
    assert metrics.done[-1] == "d" and end.pending == [] and metrics.batches == [3, 1]
    end.drain()  # nothing kept: nothing handed on
    assert metrics.batches == [3, 1]


def test_a_failing_access_log_is_logged_and_the_requests_still_counted(caplog):
    metrics = Counted()

    def access_log(batch):
        raise OSError("disk full")

    end = RequestEnd(metrics, access_log)
    end.batch = 10
    for request_id in ("a", "b", "c"):
        ended(end, request_id, tunnel="client" if request_id == "b" else None)
    with caplog.at_level(logging.ERROR, logger="gunicorn.error"):
        end.drain()
    assert metrics.done == ["a", "b", "c"] and metrics.tunnels == ["b"]
    assert "error logging 3 requests" in caplog.text


def test_a_batch_the_metrics_fail_on_is_logged_and_still_written(caplog):
    class Failing(Counted):
        def requests_done(self, records):
            raise ValueError("bad record")

    lines = []
    end = RequestEnd(
        Failing(), lambda batch: lines.extend(record.request_id for record, _ in batch)
    )
    end.batch = 2
    with caplog.at_level(logging.ERROR, logger="gunicorn.error"):
        ended(end, "a")
        ended(end, "b")
    assert lines == ["a", "b"]
    assert "error counting 2 requests" in caplog.text
