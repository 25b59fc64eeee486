"""Fair accepting (app/process/accept.py): a worker over its share defers, briefly."""

from __future__ import annotations

import gevent
import gevent.event
import gevent.pool
import gevent.socket as socket
import pytest
from gevent.server import StreamServer

from app.process import accept
from app.process.accept import Fairness, FairServer
from app.traffic.shared import Capacity, SharedArea


def area_of(workers: int) -> SharedArea:
    return SharedArea(Capacity(services=1, hosts=1, columns=max(8, 4 * workers)))


def worker(area: SharedArea, column: int, open_connections: int) -> Fairness:
    area.column = column
    fairness = Fairness(area)
    fairness.open = open_connections
    return fairness


def publish_other(area: SharedArea, count: int) -> None:
    """The other worker (column 1) publishes ``count``; this one is column 0 again."""
    area.column = 1
    area.publish_connections(count)
    area.column = 0


def test_a_worker_alone_never_defers():
    area = area_of(1)
    assert not worker(area, 0, 500).over_share()
    assert area.accepting_counts() == [500]


def test_a_worker_over_the_average_plus_slack_defers():
    area = area_of(2)
    publish_other(area, 40)
    ahead = worker(area, 0, 60)
    assert ahead.over_share()  # average 50, slack 2.5: 60 > 52.5
    near = worker(area, 0, 44)
    assert not near.over_share()  # average 42, slack 2.1: 44 <= 44.1
    assert sorted(area.accepting_counts()) == [40, 44]


def test_the_slack_is_at_least_a_few_connections():
    area = area_of(2)
    publish_other(area, 0)
    assert not worker(area, 0, 4).over_share()  # a burst's first accepts: 4 <= 2 + 2
    assert worker(area, 0, 5).over_share()  # 5 > 2.5 + 2


def test_workers_that_stopped_accepting_do_not_count():
    area = area_of(2)
    publish_other(area, 0)
    first = worker(area, 1, 0)
    first.leave()
    assert not worker(area, 0, 300).over_share()
    assert area.accepting_counts() == [300]


def test_the_master_clears_an_exited_workers_count():
    area = area_of(2)
    column = area.take_column()
    area.publish_connections(12)
    area.release_column(column)
    assert area.accepting_counts() == []


@pytest.mark.parametrize("spacing", [accept.PAUSE, 10 * accept.PAUSE])
def test_deferring_lasts_max_defer_then_accepts_until_within_its_share(monkeypatch, spacing):
    """However late the resume timer fires (a busy loop), a run of deferrals ends
    MAX_DEFER after it began; accepting goes on until the worker is within its share."""
    area = area_of(2)
    publish_other(area, 0)
    fairness = worker(area, 0, 50)
    now = [100.0]
    monkeypatch.setattr(accept.time, "monotonic", lambda: now[0])
    decisions = []
    for _ in range(int(2 * accept.MAX_DEFER / spacing)):  # the other worker never accepts
        decisions.append(fairness.defer())
        now[0] += spacing
    deferred = decisions.index(False)
    assert decisions[:deferred] == [True] * deferred
    assert deferred * spacing == pytest.approx(accept.MAX_DEFER, abs=1.5 * spacing)
    assert not any(decisions[deferred:])  # from then on it accepts
    publish_other(area, 50)  # the other caught up: the run is over
    assert not fairness.defer()
    publish_other(area, 0)
    assert fairness.defer() is True  # over again: a new run


def test_a_worker_that_left_never_counts_again():
    area = area_of(2)
    publish_other(area, 0)
    fairness = worker(area, 0, 50)
    fairness.leave()
    assert not fairness.over_share()  # an accept after SIGTERM publishes nothing
    assert area.accepting_counts() == [0]


def hub_errors(monkeypatch) -> list:
    """What gevent's hub would print and swallow (an error in a timer callback)."""
    errors = []
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "handle_error", lambda context, kind, value, tb: errors.append(value))
    return errors


def fair_server(area: SharedArea, handle=lambda s, a: None) -> tuple[FairServer, Fairness]:
    publish_other(area, 0)
    fairness = Fairness(area)
    server = FairServer(("127.0.0.1", 0), handle=handle, fairness=fairness,
                        spawn=gevent.pool.Pool(10))  # fmt: skip
    server.start()
    return server, fairness


def test_a_fair_server_stops_accepting_for_a_pause_then_resumes(monkeypatch):
    errors = hub_errors(monkeypatch)
    server, fairness = fair_server(area_of(2))
    try:
        fairness.open = 20  # over its share: 20 > 10 + 2
        assert server.do_read() is None
        assert server._watcher is None  # gevent's accept watcher is stopped ...
        gevent.sleep(accept.PAUSE * 5)
        assert server._watcher is not None  # ... and started again after the pause
    finally:
        server.close()
    assert errors == []


def test_closing_a_deferring_server_cancels_its_resume(monkeypatch):
    errors = hub_errors(monkeypatch)
    server, fairness = fair_server(area_of(2))
    fairness.open = 20
    assert server.do_read() is None
    server.close()
    gevent.sleep(accept.PAUSE * 5)  # the timer would have fired on a closed server
    assert server._watcher is None and errors == []
    assert fairness.left and fairness.area.accepting_counts() == [0]


def test_a_closed_connection_is_counted_out_at_once():
    area = area_of(2)
    release = gevent.event.Event()
    server, fairness = fair_server(area, handle=lambda sock, address: release.wait())
    try:
        with socket.create_connection(server.address), socket.create_connection(server.address):
            gevent.sleep(0.05)  # accepted, and being served
            area.column = 0
            assert fairness.open == 2
            release.set()
            gevent.sleep(0.05)
            assert sorted(area.accepting_counts()) == [0, 0]  # published as they ended
    finally:
        server.close()


def test_the_private_names_these_tests_read_are_still_gevents():
    """The tests above read ``_watcher`` (gevent's accept watcher, None when stopped)."""
    server = StreamServer(("127.0.0.1", 0), handle=lambda s, a: None)
    server.start()
    try:
        assert server._watcher is not None
        server.stop_accepting()
        assert server._watcher is None
    finally:
        server.close()
