"""Each strategy's distribution, weights included, and retries skipping tried hosts."""

from __future__ import annotations

from collections import Counter

import pytest

from app.config import STRATEGIES as CONFIG_STRATEGIES
from app.config import Host, Service
from app.traffic.balancer import STRATEGIES, LeastConnections, Random, RoundRobin, make_balancer

A, B, C = Host("10.0.0.1", 80), Host("10.0.0.2", 80), Host("10.0.0.3", 80)


def picks(balancer, count, exclude=()):
    order = []
    for _ in range(count):
        host = balancer.pick(exclude)
        balancer.release(host)
        order.append(host)
    return order


def test_every_configurable_strategy_has_a_balancer():
    assert set(STRATEGIES) == set(CONFIG_STRATEGIES)
    for name, kind in STRATEGIES.items():
        service = Service(name="s", domain="s.test", hosts=(A,), strategy=name)
        assert type(make_balancer(service)) is kind


def test_round_robin_cycles_in_order():
    assert picks(RoundRobin((A, B, C)), 6) == [A, B, C, A, B, C]


def test_round_robin_weights_are_smooth_like_nginx():
    heavy = Host("10.0.0.1", 80, weight=5)
    order = picks(RoundRobin((heavy, B, C)), 7)
    # nginx's documented sequence for weights 5,1,1: a a b a c a a (smooth, not aaaaabc)
    assert order == [heavy, heavy, B, heavy, C, heavy, heavy]


def test_round_robin_weight_shares_over_many_picks():
    hosts = (Host("h1", 1, weight=3), Host("h2", 1, weight=2), Host("h3", 1, weight=1))
    counts = Counter(picks(RoundRobin(hosts), 600))
    assert [counts[h] for h in hosts] == [300, 200, 100]


def test_random_follows_weights_roughly():
    hosts = (Host("h1", 1, weight=3), Host("h2", 1, weight=1))
    counts = Counter(picks(Random(hosts), 4000))
    assert 0.70 < counts[hosts[0]] / 4000 < 0.80


def test_least_connections_prefers_the_idle_host():
    balancer = LeastConnections((A, B, C))
    first, second = balancer.pick(), balancer.pick()  # held, not released
    assert first != second
    (third,) = {A, B, C} - {first, second}
    assert balancer.pick() == third
    balancer.release(first)
    assert balancer.pick() == first
    assert balancer.in_flight == {A: 1, B: 1, C: 1} | {first: 1}


def test_least_connections_divides_by_weight():
    big = Host("big", 1, weight=3)
    balancer = LeastConnections((big, B))
    held = [balancer.pick() for _ in range(4)]
    assert Counter(held) == {big: 3, B: 1}


def test_least_connections_round_robins_between_equal_hosts():
    assert picks(LeastConnections((A, B, C)), 6) == [A, B, C, A, B, C]


def test_least_connections_on_an_idle_pod_takes_round_robins_weighted_order():
    heavy = Host("10.0.0.1", 80, weight=5)
    assert picks(LeastConnections((heavy, B, C)), 7) == picks(RoundRobin((heavy, B, C)), 7)


@pytest.mark.parametrize("kind", [RoundRobin, Random, LeastConnections])
def test_pick_skips_excluded_hosts_and_runs_out(kind):
    balancer = kind((A, B, C))
    assert set(picks(balancer, 30, exclude=[A])) == {B, C}
    assert balancer.pick(exclude=[A, B, C]) is None


@pytest.mark.parametrize("kind", [RoundRobin, Random, LeastConnections])
def test_in_flight_counts_follow_pick_and_release(kind):
    balancer = kind((A, B))
    hosts = [balancer.pick() for _ in range(5)]
    assert sum(balancer.in_flight.values()) == 5
    for host in hosts:
        balancer.release(host)
    assert set(balancer.in_flight.values()) == {0}
