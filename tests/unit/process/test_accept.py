"""Fair accepting (app/process/accept.py): a worker over its share defers, briefly."""

from __future__ import annotations

import gevent
import gevent.pool
import pytest
from gevent.server import StreamServer

from app.process import accept
from app.process.accept import Fairness, FairServer
from app.traffic.shared import Capacity, SharedArea


def area_of(workers: int) -> SharedArea:
    return SharedArea(Capacity(services=1, hosts=1, columns=max(8, 4 * workers)))


class Pool(list):
    """A stand-in for a gevent pool: its length is the open connections."""


def worker(area: SharedArea, column: int, open_connections: int) -> Fairness:
    area.column = column
    fairness = Fairness(area)
    fairness.pools.append(Pool([None] * open_connections))
    return fairness


def test_a_worker_alone_never_defers():
    area = area_of(1)
    assert not worker(area, 0, 500).over_share()
    assert area.accepting_counts() == [500]


def test_a_worker_over_the_average_plus_slack_defers():
    area = area_of(2)
    area.column = 1
    area.publish_connections(40)
    ahead = worker(area, 0, 60)
    assert ahead.over_share()  # average 50, slack 2.5: 60 > 52.5
    near = worker(area, 0, 44)
    assert not near.over_share()  # average 42, slack 2.1: 44 <= 44.1
    assert sorted(area.accepting_counts()) == [40, 44]


def test_the_slack_is_at_least_a_few_connections():
    area = area_of(2)
    area.column = 1
    area.publish_connections(0)
    assert not worker(area, 0, 4).over_share()  # a burst's first accepts: 4 <= 2 + 2
    assert worker(area, 0, 5).over_share()  # 5 > 2.5 + 2


def test_workers_that_stopped_accepting_do_not_count():
    area = area_of(2)
    area.column = 1
    area.publish_connections(0)
    first = worker(area, 1, 0)
    first.leave()
    assert not worker(area, 0, 300).over_share()
    area.release_column(1) if area._holders[1] else None  # a column never taken: no-op
    assert area.accepting_counts() == [300]


def test_the_master_clears_an_exited_workers_count():
    area = area_of(2)
    column = area.take_column()
    area.publish_connections(12)
    area.release_column(column)
    assert area.accepting_counts() == []


def test_deferring_never_lasts_longer_than_max_defer(monkeypatch):
    area = area_of(2)
    area.column = 1
    area.publish_connections(0)
    fairness = worker(area, 0, 50)
    now = [100.0]
    monkeypatch.setattr(accept.time, "monotonic", lambda: now[0])
    decisions = []
    for _ in range(int(2 * accept.MAX_DEFER / accept.PAUSE)):  # the other never accepts
        decisions.append(fairness.defer())
        now[0] += accept.PAUSE
    assert decisions[0] is True
    deferred = decisions.index(False)
    assert deferred * accept.PAUSE == pytest.approx(accept.MAX_DEFER, abs=2 * accept.PAUSE)
    now[0] += 1.0  # later, a new run of deferrals starts afresh
    assert fairness.defer() is True


def test_a_fair_server_stops_accepting_for_a_pause_then_resumes():
    area = area_of(2)
    area.column = 1
    area.publish_connections(0)
    area.column = 0
    fairness = Fairness(area)
    server = FairServer(("127.0.0.1", 0), handle=lambda s, a: None, fairness=fairness,
                        spawn=gevent.pool.Pool(10))  # fmt: skip
    server.start()
    try:
        fairness.pools.append(Pool([None] * 20))  # over its share: 20 > 10 + 2
        assert server.do_read() is None
        assert server._watcher is None  # gevent's accept watcher is stopped ...
        gevent.sleep(accept.PAUSE * 5)
        assert server._watcher is not None  # ... and started again after the pause
    finally:
        server.close()


def test_a_closed_server_is_not_resumed():
    area = area_of(2)
    area.column = 1
    area.publish_connections(0)
    area.column = 0
    fairness = Fairness(area)
    fairness.pools.append(Pool([None] * 20))
    server = FairServer(("127.0.0.1", 0), handle=lambda s, a: None, fairness=fairness)
    server.start()
    assert server.do_read() is None
    server.close()
    gevent.sleep(accept.PAUSE * 5)  # the timer fires on a closed server: nothing happens
    assert server._watcher is None


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
