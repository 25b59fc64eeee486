"""The pod's shared area: one view of the upstreams for every worker.

"Workers" here are ServiceStates on different columns of one area, and, where
sharing across processes is the point, a real forked child.
"""

from __future__ import annotations

import os

import pytest

from app.config import parse_config
from app.traffic.balancer import LeastConnections, RoundRobin
from app.traffic.health import Health
from app.traffic.routing import Router
from app.traffic.shared import AreaFull, Capacity, ProberLock, SharedArea, Zone


def config(*services: tuple[str, list[int]]):
    lines = ["proxy:", "  services:"]
    for name, ports in services:
        hosts = ", ".join(f"{{address: 127.0.0.1, port: {port}}}" for port in ports)
        lines.append(f"    - {{name: {name}, domain: {name}.test, hosts: [{hosts}]}}")
    return parse_config("\n".join(lines) + "\n")


WEB = config(("web", [1, 2, 3]))


def workers(cfg=WEB, count=2):
    """``count`` workers' views of one area (as forked workers would have them)."""
    area = SharedArea(Capacity.for_config(cfg, count))
    zone = area.place(cfg)
    views = []
    for _ in range(count):
        area.take_column()  # what the master does before each fork
        views.append(zone.service(cfg.services[0]))
    return area, views


def test_in_flight_is_counted_per_worker_and_summed_for_the_pod():
    _, (one, two) = workers()
    a, b, _ = WEB.services[0].hosts
    one.take(a), one.take(a), two.take(a), two.take(b)
    assert (one.host_in_flight(a), two.host_in_flight(a)) == (3, 3)
    assert one.total_in_flight() == two.total_in_flight() == 4
    assert (one.worker_in_flight(), two.worker_in_flight()) == (2, 2)
    two.give_back(b)
    assert one.host_in_flight(b) == 0


def test_a_dead_workers_column_is_zeroed_and_handed_out_again():
    area, (one, two) = workers()
    a = WEB.services[0].hosts[0]
    one.take(a), two.take(a), two.take(a)
    area.release_column(1)  # the master's child_exit for the second worker
    assert one.host_in_flight(a) == 1 and one.total_in_flight() == 1
    assert area.take_column() == 1  # the free column goes to the next worker forked


def test_more_workers_than_columns_share_the_least_shared_column(caplog):
    area = SharedArea(Capacity(services=1, hosts=1, columns=2))
    assert [area.take_column() for _ in range(3)] == [0, 1, 0]
    assert "more than 2 workers alive" in caplog.text
    area.release_column(0)  # one of its two holders: the column keeps its counts
    assert area._holders == [1, 1]


def test_round_robin_takes_turns_across_workers():
    _, (one, two) = workers()
    balancers = [RoundRobin(WEB.services[0].hosts, state) for state in (one, two)]
    picks = []
    for i in range(12):
        balancer = balancers[i % 3 % 2]  # the workers' turns in an uneven pattern
        host = balancer.pick()
        balancer.release(host)
        picks.append(host.port)
    assert picks == [1, 2, 3] * 4


def test_least_connections_sees_the_other_workers_requests():
    _, (one, two) = workers()
    hosts = WEB.services[0].hosts
    held = [LeastConnections(hosts, one).pick() for _ in range(2)]
    # The second worker has nothing in flight itself, yet avoids the busy hosts.
    assert LeastConnections(hosts, two).pick() not in held


def test_an_ejection_by_one_worker_is_seen_by_the_other():
    _, (one, two) = workers()
    service = WEB.services[0]
    first, second = Health(service, state=one), Health(service, state=two)
    assert second.out_of_rotation() == frozenset()  # cached in the second worker
    for _ in range(service.outlier.consecutive_failures):
        first.record_failure(service.hosts[0])
    assert second.out_of_rotation() == {service.hosts[0]}
    assert second.states[service.hosts[0]].ejections == 1


def test_the_area_is_shared_with_forked_workers():
    zone = Zone.private(WEB, workers=2)
    area, service = zone.area, WEB.services[0]
    area.take_column()
    parent = zone.service(service)
    area.take_column()
    pid = os.fork()
    if pid == 0:  # the child: a worker forked by the master
        try:
            child = zone.service(service)
            child.take(service.hosts[1])
            health = Health(service, state=child)
            for _ in range(service.outlier.consecutive_failures):
                health.record_failure(service.hosts[0])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert parent.host_in_flight(service.hosts[1]) == 1
    assert Health(service, state=parent).out_of_rotation() == {service.hosts[0]}


def test_a_reload_keeps_the_slots_of_unchanged_hosts_and_gives_new_hosts_fresh_ones():
    area = SharedArea(Capacity.for_config(WEB, 2))
    before = area.place(WEB)
    state = before.service(WEB.services[0])
    state.host_state[WEB.services[0].hosts[0]].ejections = 3  # health to keep
    after = area.place(config(("web", [1, 4])))
    kept = after.host_slots[("web", "127.0.0.1:1")]
    assert kept == before.host_slots[("web", "127.0.0.1:1")]
    assert after.host_slots[("web", "127.0.0.1:4")] not in before.host_slots.values()
    reloaded = after.service(config(("web", [1, 4])).services[0])
    assert reloaded.host_state[WEB.services[0].hosts[0]].ejections == 3


def test_freed_slots_are_reused_zeroed_only_when_the_area_is_otherwise_full():
    small = Capacity(services=2, hosts=3, columns=1)
    area = SharedArea(small)
    first = area.place(config(("web", [1, 2])))
    gone = first.host_slots[("web", "127.0.0.1:2")]
    first.service(config(("web", [1, 2])).services[0]).host_state[
        config(("web", [1, 2])).services[0].hosts[1]
    ].failures = 2
    second = area.place(config(("web", [1, 3])))  # slot 2 was never used: it goes first
    assert second.host_slots[("web", "127.0.0.1:3")] == 2
    third = area.place(config(("web", [1, 3, 4])))  # full: the freed slot, zeroed
    assert third.host_slots[("web", "127.0.0.1:4")] == gone
    assert area.host_counts[gone * 4] == 0


def test_a_config_that_does_not_fit_is_refused_and_changes_nothing():
    area = SharedArea(Capacity(services=2, hosts=2, columns=1))
    zone = area.place(config(("web", [1, 2])))
    with pytest.raises(AreaFull, match="restart lbproxy"):
        area.place(config(("web", [1, 2]), ("api", [3, 4, 5])))
    assert area.place(config(("web", [1, 2]))).host_slots == zone.host_slots


def test_one_prober_per_pod_and_another_takes_over_when_it_stops():
    area = SharedArea(Capacity(services=1, hosts=1, columns=2))
    area.create_lock()
    first, second = ProberLock(area), ProberLock(area)
    assert first.acquire() and not second.acquire()
    assert area.prober_pid == os.getpid()
    first.release()
    assert area.prober_pid == 0
    assert second.acquire() and not first.acquire()
    second.release()


def test_the_prober_lock_is_freed_when_its_process_dies():
    area = SharedArea(Capacity(services=1, hosts=1, columns=2))
    area.create_lock()
    to_parent, to_child = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(to_parent[1], b"1" if ProberLock(area).acquire() else b"0")
            os.read(to_child[0], 1)  # hold the lock until told to die
        finally:
            os._exit(0)
    try:
        assert os.read(to_parent[0], 1) == b"1"
        mine = ProberLock(area)
        assert not mine.acquire()  # the child holds it
    finally:
        os.write(to_child[1], b"x")
        os.waitpid(pid, 0)
    assert mine.acquire()  # no release call: the kernel freed it
    mine.release()
    for fd in (*to_parent, *to_child):
        os.close(fd)


def test_status_reads_the_pod_not_the_worker():
    area, (one, two) = workers()
    router = Router(WEB, Zone(area, *_slots(area, WEB)))
    host = WEB.services[0].hosts[2]
    one.take(host), two.take(host)
    assert router.route("web.test").balancer.in_flight[host] == 2


def _slots(area, cfg):
    zone = area.place(cfg)
    return zone.service_slots, zone.host_slots


def test_a_host_marked_down_comes_back_when_a_reload_removes_its_health_check():
    checked = parse_config(
        "proxy:\n  services:\n    - {name: web, domain: web.test, health_check: {},"
        " hosts: [{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 2}]}\n"
    )
    area = SharedArea(Capacity.for_config(checked, 1))
    service = checked.services[0]
    health = Health(service, state=area.place(checked).service(service))
    for _ in range(service.health_check.unhealthy_threshold):
        health.record_probe(service.hosts[0], healthy=False)
    assert health.out_of_rotation() == {service.hosts[0]}
    unchecked = config(("web", [1, 2]))  # the same hosts keep their slots, and their words
    after = unchecked.services[0]
    reloaded = Health(after, state=area.place(unchecked).service(after))
    assert reloaded.states[after.hosts[0]].active_down  # the word is still set ...
    assert reloaded.out_of_rotation() == frozenset()  # ... but nothing probes it: not down
