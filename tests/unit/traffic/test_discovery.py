"""DNS discovery: the prober's loop on a scripted DNS and a fake clock, and the
routes that read what it wrote. (The real dnsmasq is in tests/e2e/test_discovery.py.)"""

from __future__ import annotations

import logging

import pytest

from app.config import ConfigError, parse_config
from app.errors import NoHealthyHost
from app.traffic.discovery import (
    HOLD_NX,
    LOG_AFTER,
    QUARANTINE,
    Answer,
    Discovery,
    LookupFailed,
)
from app.traffic.routing import Router
from app.traffic.shared import Zone

CONFIG = parse_config(
    """
proxy:
  resolver: {refresh: 5}
  services:
    - name: web
      domain: web.test
      hosts:
        - {address: 10.0.0.9, port: 80}
        - {address: web.svc.test, port: 80, resolve: true, weight: 3}
"""
)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


class ScriptedDns:
    """Answers from a script: a list of addresses (TTL ``ttl``) or a failure kind."""

    def __init__(self):
        self.answer: list[str] | str = []
        self.ttl = 1.0

    def lookup(self, entry):
        if isinstance(self.answer, str):
            raise LookupFailed(self.answer)
        return Answer([(ip, entry.port) for ip in self.answer], self.ttl)


@pytest.fixture
def pod():
    zone = Zone.private(CONFIG)
    dns, clock, lookups = ScriptedDns(), Clock(), []
    discovery = Discovery(CONFIG, zone, dns, lambda *lookup: lookups.append(lookup), clock)
    router = Router(CONFIG, zone)
    return discovery, dns, clock, router, lookups


def resolve(discovery, answer, dns):
    dns.answer = answer
    discovery.resolve(discovery.names[0])


def hosts(router):
    return [host.name for host in router.route("web.test").service.hosts]


def test_every_address_is_a_host_after_the_fixed_ones_with_the_entrys_weight(pod):
    discovery, dns, _, router, lookups = pod
    assert hosts(router) == ["10.0.0.9:80"]  # nothing resolved yet
    resolve(discovery, ["10.0.0.1", "10.0.0.2", "10.0.0.9", "10.0.0.1"], dns)
    route = router.route("web.test")
    # 10.0.0.9 is a fixed host already, and 10.0.0.1 came twice: one host each.
    assert hosts(router) == ["10.0.0.9:80", "10.0.0.1:80", "10.0.0.2:80"]
    assert {host.weight for host in route.service.hosts[1:]} == {3}
    assert set(route.resolved_from.values()) == {"web.svc.test"}
    assert lookups == [("web", True)]


def test_addresses_keep_their_positions_and_health_while_they_stay(pod):
    discovery, dns, _, router, _ = pod
    resolve(discovery, ["10.0.0.1", "10.0.0.2"], dns)
    route = router.route("web.test")
    first = route.service.hosts[1]
    for _ in range(3):
        route.health.record_failure(first)  # ejected
    resolve(discovery, ["10.0.0.3", "10.0.0.1"], dns)
    route = router.route("web.test")
    assert hosts(router) == ["10.0.0.9:80", "10.0.0.1:80", "10.0.0.3:80"]
    assert first in route.health.out_of_rotation()  # still ejected: same slot


def test_a_removed_address_takes_no_new_request_and_its_in_flight_one_ends_cleanly(pod):
    discovery, dns, clock, router, _ = pod
    removed = []
    router.on_hosts_removed = removed.extend
    resolve(discovery, ["10.0.0.1"], dns)
    route = router.route("web.test")
    lease = route.pick([route.service.hosts[0]])  # the fixed host tried: 10.0.0.1
    assert lease.host.name == "10.0.0.1:80"
    resolve(discovery, ["10.0.0.2"], dns)
    route = router.route("web.test")
    assert [host.name for host in removed] == ["10.0.0.1:80"]
    assert "10.0.0.1:80" not in hosts(router)
    lease.health.record_success(lease.host)  # the outcome goes to the health it came from
    # Its position is busy: the next new address gets another, and 10.0.0.1's
    # words are not zeroed while a request is in flight to it.
    resolve(discovery, ["10.0.0.2", "10.0.0.3"], dns)
    positions = discovery.names[0].positions
    assert positions[("10.0.0.3", 80)] != 0 and positions[("10.0.0.2", 80)] != 0
    lease.release()
    resolve(discovery, ["10.0.0.2", "10.0.0.3", "10.0.0.4"], dns)
    assert discovery.names[0].positions[("10.0.0.4", 80)] not in (0, 1, 2)  # 0 rests
    clock.now += QUARANTINE
    resolve(discovery, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"], dns)
    assert discovery.names[0].positions[("10.0.0.5", 80)] == 0  # free again, reused


def test_a_reused_position_starts_with_clean_health(pod):
    discovery, dns, clock, router, _ = pod
    resolve(discovery, ["10.0.0.1"], dns)
    route = router.route("web.test")
    for _ in range(3):
        route.health.record_failure(route.service.hosts[1])
    resolve(discovery, ["10.0.0.2"], dns)  # 10.0.0.1 leaves: its position rests
    resolve(discovery, ["10.0.0.2", "10.0.0.1"], dns)  # it comes back elsewhere, clean
    assert discovery.names[0].positions[("10.0.0.1", 80)] == 2
    assert router.route("web.test").health.out_of_rotation() == frozenset()
    clock.now += QUARANTINE
    resolve(discovery, ["10.0.0.5"], dns)  # position 0 again, its health zeroed
    assert discovery.names[0].positions[("10.0.0.5", 80)] == 0
    assert router.route("web.test").health.out_of_rotation() == frozenset()


def test_a_record_left_half_written_by_a_dead_prober_is_written_whole_again(pod):
    discovery, dns, clock, router, _ = pod
    resolve(discovery, ["10.0.0.1"], dns)
    record = discovery.names[0].record
    record.area.name_sequences[record.slot] += 1  # killed between the two bumps: odd
    assert record.read() is None
    successor = Discovery(CONFIG, router.zone, dns, clock=clock)
    resolve(successor, ["10.0.0.2"], dns)
    assert record.sequence % 2 == 0
    assert hosts(router) == ["10.0.0.9:80", "10.0.0.2:80"]


def test_a_lookup_that_raises_anything_else_is_logged_and_tried_again(pod, caplog):
    discovery, dns, clock, _, _ = pod
    name = discovery.names[0]
    dns.answer = None  # the scripted DNS breaks with a TypeError
    discovery._resolve_safely(name)
    assert "lookup of web.svc.test:80" in caplog.text
    assert name.due == clock.now + 5 and not name.busy


def test_a_failed_lookup_keeps_the_set_and_ten_in_a_row_are_logged(pod, caplog):
    discovery, dns, clock, router, lookups = pod
    resolve(discovery, ["10.0.0.1"], dns)
    caplog.set_level(logging.WARNING, "gunicorn.error")
    for _ in range(LOG_AFTER):
        clock.now += 5
        resolve(discovery, "timeout", dns)
    assert hosts(router) == ["10.0.0.9:80", "10.0.0.1:80"]
    assert "10 lookups of web.svc.test:80 in a row failed" in caplog.text
    assert lookups.count(("web", False)) == LOG_AFTER
    document = router.route("web.test").documents["web.svc.test:80"]
    assert (document["error"], document["failures"], document["errors"]) == ("timeout", 10, 10)


def test_nxdomain_keeps_the_last_good_set_for_the_hold_then_empties_it(pod):
    discovery, dns, clock, router, _ = pod
    resolve(discovery, ["10.0.0.1"], dns)
    resolve(discovery, "nxdomain", dns)
    assert discovery.names[0].due == clock.now + 5  # refresh, the hold is longer
    clock.now += HOLD_NX - 1
    resolve(discovery, "empty", dns)
    assert hosts(router) == ["10.0.0.9:80", "10.0.0.1:80"]
    clock.now += 1
    resolve(discovery, "nxdomain", dns)
    assert hosts(router) == ["10.0.0.9:80"]
    resolve(discovery, ["10.0.0.1"], dns)  # back
    assert hosts(router) == ["10.0.0.9:80", "10.0.0.1:80"]


def test_the_ttl_sets_the_next_lookup_between_1_s_and_refresh(pod):
    discovery, dns, clock, _, _ = pod
    for ttl, wait in [(0, 1), (3, 3), (300, 5)]:
        dns.ttl = ttl
        resolve(discovery, ["10.0.0.1"], dns)
        assert discovery.names[0].due == clock.now + wait


def test_a_new_prober_carries_on_from_the_record(pod):
    discovery, dns, clock, router, _ = pod
    resolve(discovery, ["10.0.0.1", "10.0.0.2"], dns)
    successor = Discovery(CONFIG, router.zone, dns, clock=clock)
    assert successor.names[0].positions == discovery.names[0].positions
    resolve(successor, ["10.0.0.2", "10.0.0.1"], dns)  # same set: nothing changes
    assert successor.names[0].version == discovery.names[0].version


def test_a_service_whose_name_never_resolved_answers_503():
    config = parse_config(
        "proxy:\n  services:\n    - {name: a, domain: a.test, hosts:"
        " [{address: nx.svc.test, port: 80, resolve: true}]}\n"
    )
    route = Router(config).route("a.test")
    assert route.service.hosts == ()
    with pytest.raises(NoHealthyHost):
        route.pick([])


@pytest.mark.parametrize(
    ("host", "where", "reason"),
    [
        ("{address: 10.0.0.1, port: 80, resolve: true}", "hosts[0].resolve", "is an IP address"),
        ("{srv: _http._tcp.web.test}", "hosts[0].resolve", "needs resolve: true"),
        ("{srv: _http._tcp.web.test, port: 80, resolve: true}", "hosts[0].port", "from DNS"),
        ("{srv: web.test, resolve: true}", "hosts[0].srv", "expected an SRV name"),
        ("{address: web.test, resolve: true}", "hosts[0].port", "required key is missing"),
        ("{port: 80}", "hosts[0].address", "required key is missing"),
    ],
)
def test_bad_host_entries_name_the_field(host, where, reason):
    with pytest.raises(ConfigError) as error:
        parse_config(f"proxy:\n  services:\n    - {{name: a, domain: a.test, hosts: [{host}]}}\n")
    assert error.value.where == f"proxy.services[0].{where}"
    assert reason in error.value.reason


@pytest.mark.parametrize(
    ("resolver", "where", "reason"),
    [
        ("{nameservers: [dns.local]}", "nameservers[0]", "expected IP, IP:port"),
        ("{nameservers: ['10.0.0.1:x']}", "nameservers[0]", "expected IP, IP:port"),
        ("{nameservers: ['10.0.0.1:0']}", "nameservers[0]", "expected an integer 1-65535"),
        ("{family: v4}", "family", "expected one of ipv4, ipv6, any"),
        ("{refresh: 0.5}", "refresh", "expected a number 1-3600"),
    ],
)
def test_bad_resolver_settings_name_the_field(resolver, where, reason):
    with pytest.raises(ConfigError) as error:
        parse_config(
            f"proxy:\n  resolver: {resolver}\n  services:\n"
            "    - {name: a, domain: a.test, hosts: [{address: 10.0.0.1, port: 1}]}\n"
        )
    assert error.value.where == f"proxy.resolver.{where}"
    assert reason in error.value.reason


def test_resolver_settings_parse():
    config = parse_config(
        "proxy:\n  resolver: {nameservers: ['10.96.0.10', '127.0.0.1:5353', '[::1]:53'],"
        " family: any, refresh: 2}\n  services:\n"
        "    - {name: a, domain: a.test, hosts: [{srv: _http._tcp.web.test, resolve: true}]}\n"
    )
    assert config.resolver.nameservers == (("10.96.0.10", 53), ("127.0.0.1", 5353), ("::1", 53))
    assert (config.resolver.family, config.resolver.refresh) == ("any", 2.0)
    (entry,) = config.services[0].discover
    assert entry.name == "_http._tcp.web.test" and config.services[0].hosts == ()
