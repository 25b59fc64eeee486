"""Pick one host of a service for the next attempt.

Each gunicorn worker balances on its own (no shared state between
processes), like nginx workers do. Every strategy keeps the number of requests
in flight per host: least_connections balances on it, and metrics read it.

``pick(exclude, limit)`` skips the hosts in ``exclude`` (already tried for this
request, or out of rotation) and those with ``limit`` requests in flight.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from app.config import Host, Service


class Balancer:
    def __init__(self, hosts: tuple[Host, ...]):
        self.hosts = hosts
        self.in_flight = dict.fromkeys(hosts, 0)
        self.total_in_flight = 0

    def pick(self, exclude: Collection[Host] = (), limit: int | None = None) -> Host | None:
        in_flight = self.in_flight
        candidates = [
            host
            for host in self.hosts
            if host not in exclude and (limit is None or in_flight[host] < limit)
        ]
        if not candidates:
            return None
        host = self.choose(candidates)
        in_flight[host] += 1
        self.total_in_flight += 1
        return host

    def release(self, host: Host) -> None:
        self.in_flight[host] -= 1
        self.total_in_flight -= 1

    def choose(self, candidates: list[Host]) -> Host:
        raise NotImplementedError


class RoundRobin(Balancer):
    """Smooth weighted round robin, as nginx does it.

    Weights 5,1,1 give a a b a c a a rather than a a a a a b c: each pick adds
    every candidate's weight to its score, takes the highest, and takes the
    total off the winner.
    """

    def __init__(self, hosts: tuple[Host, ...]):
        super().__init__(hosts)
        self.score = dict.fromkeys(hosts, 0)

    def choose(self, candidates: list[Host]) -> Host:
        if len(candidates) == 1:
            return candidates[0]
        score = self.score
        best = candidates[0]
        total = 0
        for host in candidates:
            score[host] += host.weight
            total += host.weight
            if score[host] > score[best]:
                best = host
        score[best] -= total
        return best


class Random(Balancer):
    """Weighted random choice: cheap, stateless, fair over many requests."""

    def choose(self, candidates: list[Host]) -> Host:
        return random.choices(candidates, weights=[host.weight for host in candidates])[0]


class LeastConnections(RoundRobin):
    """Fewest requests in flight relative to weight; ties go round robin."""

    def choose(self, candidates: list[Host]) -> Host:
        load = {host: self.in_flight[host] / host.weight for host in candidates}
        least = min(load.values())
        return super().choose([host for host in candidates if load[host] == least])


STRATEGIES = {
    "round_robin": RoundRobin,
    "random": Random,
    "least_connections": LeastConnections,
}


def make_balancer(service: Service) -> Balancer:
    return STRATEGIES[service.strategy](service.hosts)
