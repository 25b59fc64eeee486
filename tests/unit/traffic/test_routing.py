"""Host -> service routing."""

from __future__ import annotations

import pytest

from app.config import parse_config
from app.errors import NoHealthyHost, Overloaded, UnknownDomain
from app.traffic.balancer import RoundRobin
from app.traffic.routing import Router
from app.traffic.shared import Zone

CONFIG = parse_config(
    """
proxy:
  services:
    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}
    - {name: b, domain: B.Test, hosts: [{address: 127.0.0.1, port: 2}]}
"""
)


def test_each_domain_routes_to_its_service():
    router = Router(CONFIG)
    assert router.route("a.test").service.name == "a"
    assert router.route("b.test").service.name == "b"
    assert isinstance(router.route("a.test").balancer, RoundRobin)


def test_each_route_keeps_one_balancer():
    router = Router(CONFIG)
    assert router.route("a.test").balancer is router.route("a.test").balancer


def test_unknown_domain_is_refused():
    with pytest.raises(UnknownDomain) as caught:
        Router(CONFIG).route("c.test")
    assert caught.value.status.startswith("404")


LIMITED = parse_config(
    """
proxy:
  services:
    - name: a
      domain: a.test
      hosts: [{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 2}]
      max_in_flight: 3
      max_in_flight_per_host: 1
"""
)


def test_limits_are_the_pods_not_split_over_the_workers():
    zone = Zone.private(LIMITED, workers=2)
    route = Router(LIMITED, zone).route("a.test")
    assert (route.max_in_flight, route.max_in_flight_per_host) == (3, 1)


def test_the_service_limit_refuses_before_picking():
    route = Router(LIMITED).route("a.test")
    first, second = route.pick([]), route.pick([])
    assert {first.host, second.host} == set(route.service.hosts)
    with pytest.raises(Overloaded):
        route.pick([])  # both hosts hold their one request
    first.release()
    route.admit()
    assert route.pick([]).host == first.host
    route.balancer.pick([])  # a third request in flight, past the per-host limit by hand
    with pytest.raises(Overloaded):
        route.admit()


def test_no_host_in_rotation_is_503_and_all_tried_is_none():
    route = Router(LIMITED).route("a.test")
    a, b = route.service.hosts
    assert route.pick([a]).host == b
    assert route.pick([a, b]) is None
    for host in (a, b):
        route.health.states[host].ejected_until = 1e12  # ejected
    route.health.shared.changed()  # as Health.record_failure does
    with pytest.raises(NoHealthyHost):
        route.pick([])


def test_a_lease_releases_its_host_exactly_once():
    route = Router(LIMITED).route("a.test")
    lease = route.pick([])
    assert route.balancer.in_flight[lease.host] == 1 and route.balancer.total_in_flight == 1
    lease.release()
    lease.release()  # an error path and close() both releasing: still once
    assert route.balancer.in_flight[lease.host] == 0 and route.balancer.total_in_flight == 0


def test_a_route_is_made_on_its_domains_first_request():
    router = Router(CONFIG)
    assert router.routes == {}
    route = router.route("b.test")
    assert list(router.routes) == ["b.test"] and router.route("b.test") is route
    assert router.by_name() == {"b": route}


def test_routes_report_health_events_with_their_service():
    events = []
    router = Router(CONFIG, on_health_event=lambda *event: events.append(event))
    route = router.route("a.test")
    host = route.service.hosts[0]
    route.health.on_event("ejected", host)
    assert events == [("a", host, "ejected")]
