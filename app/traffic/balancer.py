"""Pick one host of a service for the next attempt.

The counts it balances on are the pod's (app/traffic/shared.py): requests in
flight per host summed over every worker, and one round-robin counter per
service that every worker advances. So round robin takes turns across
workers, and ``least_connections`` sees the requests the other workers hold.

``pick(exclude, limit)`` skips the hosts in ``exclude`` (already tried for this
request, or out of rotation) and those with ``limit`` requests in flight
pod-wide; ``take(host)`` counts a host chosen elsewhere (by affinity) the same way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from functools import lru_cache

from app.config import Host, Service
from app.traffic.shared import ServiceState, private_state


class Balancer:
    def __init__(self, hosts: tuple[Host, ...], state: ServiceState | None = None):
        self.hosts = hosts
        self.state = state or private_state(hosts)

    def pick(self, exclude: Collection[Host] = (), limit: int | None = None) -> Host | None:
        candidates = self.candidates(exclude, limit)
        if not candidates:
            return None
        host = self.choose(candidates)
        self.state.take(host)
        return host

    def candidates(self, exclude: Collection[Host] = (), limit: int | None = None) -> tuple:
        if limit is None:
            if not exclude:
                return self.hosts
            return tuple(host for host in self.hosts if host not in exclude)
        in_flight = self.state.host_in_flight
        return tuple(host for host in self.hosts if host not in exclude and in_flight(host) < limit)

    def take(self, host: Host) -> None:
        self.state.take(host)

    def release(self, host: Host) -> None:
        self.state.give_back(host)

    @property
    def in_flight(self) -> dict[Host, int]:
        """Requests in flight per host, pod-wide."""
        return {host: self.state.host_in_flight(host) for host in self.hosts}

    @property
    def total_in_flight(self) -> int:
        return self.state.total_in_flight()

    def choose(self, candidates: tuple[Host, ...]) -> Host:
        raise NotImplementedError


class RoundRobin(Balancer):
    """Smooth weighted round robin, as nginx does it, one turn per pick pod-wide.

    Weights 5,1,1 give a a b a c a a rather than a a a a a b c. The order for a
    set of candidates is nginx's (each pick adds every candidate's weight to
    its score, takes the highest, and takes the total off the winner), worked
    out once; the service's shared counter says where in it the pod is.
    """

    def __init__(self, hosts: tuple[Host, ...], state: ServiceState | None = None):
        super().__init__(hosts, state)
        self.full_order = smooth_order(hosts)  # every host a candidate: the usual case

    def choose(self, candidates: tuple[Host, ...]) -> Host:
        if len(candidates) == 1:
            return candidates[0]
        order = self.full_order if candidates is self.hosts else smooth_order(candidates)
        return order[self.state.next_turn() % len(order)]


@lru_cache(maxsize=32)  # candidate sets seen lately (hosts out, tried)
def smooth_order(hosts: tuple[Host, ...]) -> tuple[Host, ...]:
    """One full cycle of nginx's smooth weighted round robin over ``hosts``."""
    divisor = math.gcd(*(host.weight for host in hosts))
    weights = [host.weight // divisor for host in hosts]
    total = sum(weights)
    score = [0] * len(hosts)
    order = []
    for _ in range(total):
        best = 0
        for i, weight in enumerate(weights):
            score[i] += weight
            if score[i] > score[best]:
                best = i
        score[best] -= total
        order.append(hosts[best])
    return tuple(order)


class Random(Balancer):
    """Weighted random choice: cheap, stateless, fair over many requests."""

    def choose(self, candidates: tuple[Host, ...]) -> Host:
        return random.choices(candidates, weights=[host.weight for host in candidates])[0]


class LeastConnections(RoundRobin):
    """Fewest requests in flight pod-wide relative to weight; ties go round robin."""

    def choose(self, candidates: tuple[Host, ...]) -> Host:
        in_flight = self.state.host_in_flight
        load = {host: in_flight(host) / host.weight for host in candidates}
        least = min(load.values())
        ties = tuple(host for host in candidates if load[host] == least)
        # All tied (an idle pod): the candidates themselves, so that round robin
        # takes its order made once, not one found by comparing hosts field by field.
        return super().choose(candidates if len(ties) == len(candidates) else ties)


STRATEGIES = {
    "round_robin": RoundRobin,
    "random": Random,
    "least_connections": LeastConnections,
}


def make_balancer(service: Service, state: ServiceState | None = None) -> Balancer:
    return STRATEGIES[service.strategy](service.hosts, state)
