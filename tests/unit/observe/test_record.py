"""What one request did: its id and its timing."""

from __future__ import annotations

import re

from app.observe.record import Record, request_id


def test_a_usable_client_id_is_kept_and_any_other_replaced():
    assert request_id("abc-42") == "abc-42"
    for offered in (None, "", "has space", "x" * 201, "caf\u00e9"):
        made = request_id(offered)
        assert re.fullmatch(r"[0-9a-f]{32}", made), made


def test_made_ids_do_not_repeat():
    assert len({request_id(None) for _ in range(10_000)}) == 10_000


def test_a_record_is_finished_once():
    record = Record("id")
    record.finish()
    first = record.finished
    record.finish()
    assert record.finished == first and record.duration >= 0
