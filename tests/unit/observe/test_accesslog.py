"""The access log's line: exactly the JSON of its fields, whatever they hold."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from app.observe.accesslog import LOGGED_KEYS, entry, line, logged_environ
from app.observe.record import Record

text = st.one_of(st.none(), st.text(max_size=30))
seconds = st.one_of(st.none(), st.floats(min_value=0, max_value=1e5, allow_nan=False))


@given(
    text,
    text,
    text,
    text,
    text,
    text,
    st.one_of(st.none(), st.integers(100, 599), st.integers(0, 10**4)),
    st.integers(0, 10**12),
    seconds,
)
def test_the_fast_line_is_the_json_of_the_entry(
    service, upstream, uri, host, client, request_id, status, size, connect
):
    record = Record(request_id or "")
    record.service, record.upstream, record.status = service, upstream, status
    record.upstream_status = status
    record.connect_time = record.upstream_time = connect
    record.bytes_in = record.bytes_out = size
    record.retries = size % 3
    record.finish()
    environ = {"REMOTE_ADDR": client, "REQUEST_METHOD": "GET", "RAW_URI": uri, "HTTP_HOST": host}
    written = line(record, environ)
    assert json.loads(written) == entry(record, environ)
    # json's text, but for the times, written with 3 decimals (17.600 for 17.6).
    times = re.findall(r'"(\w+_ms)":(null|\d+\.\d{3})[,}]', written)
    assert [name for name, _ in times] == ["duration_ms", "connect_ms", "upstream_ms"]
    assert re.sub(r'_ms":[^,]*', '_ms":0', written) == re.sub(
        r'_ms":[^,]*', '_ms":0', json.dumps(entry(record, environ), separators=(",", ":"))
    )
    # A record kept for a later line keeps only the keys the line reads.
    full = {**environ, "wsgi.input": object(), "HTTP_COOKIE": "secret", "PATH_INFO": "/"}
    assert line(record, logged_environ(full)) == written
    assert set(logged_environ(full)) == set(LOGGED_KEYS) == set(environ)
    assert logged_environ({}) == dict.fromkeys(LOGGED_KEYS)  # None where the environ has none
    assert "\n" not in written


def logger_to(path):
    from gunicorn.config import Config

    from app.observe.accesslog import JsonAccessLogger

    config = Config()
    config.set("accesslog", str(path))
    return JsonAccessLogger(config)


def ended_batch():
    records = [Record(f"r{n}") for n in range(3)]
    for record in records:
        record.finish()
    good = {"REMOTE_ADDR": "10.0.0.1", "RAW_URI": "/a"}
    return [(records[0], good), (records[1], {"RAW_URI": 5}), (records[2], good)]


def test_a_batch_is_written_in_one_go_and_a_line_that_fails_only_loses_itself(tmp_path, capfd):
    logger = logger_to(tmp_path / "access.log")
    writes = []
    stream = logger._direct_stream()
    stream.write = lambda text, write=stream.write: writes.append(write(text))
    logger.log_records(ended_batch())  # r1's RAW_URI is no text: its line fails
    logger.flush_access_log()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert [json.loads(text)["request_id"] for text in lines] == ["r0", "r2"]
    assert len(writes) == 1
    assert "error logging request r1" in capfd.readouterr().err  # gunicorn's error log


def test_a_handler_that_is_not_plain_gets_each_line_through_logging(tmp_path):
    import logging

    logger = logger_to(tmp_path / "access.log")
    logger.access_log.addFilter(logging.Filter())  # a filter: lines go through logging
    assert logger._direct_stream() is None
    logger.log_records(ended_batch())
    for handler in logger.access_log.handlers:
        handler.flush()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert [json.loads(text)["request_id"] for text in lines] == ["r0", "r2"]


def utc_millisecond(epoch: float) -> str:
    from datetime import UTC, datetime

    milli = int(epoch * 1000)
    return f"{datetime.fromtimestamp(milli // 1000, UTC):%Y-%m-%dT%H:%M:%S}.{milli % 1000:03d}Z"


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_the_time_is_the_utc_millisecond_the_request_started(epoch):
    from app.observe.accesslog import _iso

    assert _iso(epoch) == utc_millisecond(epoch)
    assert _iso(epoch) == utc_millisecond(epoch)  # the same millisecond: the last one formatted
    assert _iso(epoch + 0.0005) == utc_millisecond(epoch + 0.0005)
    assert _iso(epoch + 1.0005) == utc_millisecond(epoch + 1.0005)  # another second
