"""Host -> service: the first step of every request.

A plain dict lookup on the lower-cased host name, so routing costs the same
with 3 domains or 10,000. Only configured domains are ever forwarded to:
lbproxy is never an open proxy.

A Route is everything one worker keeps for one service: its balancer, the
health of its hosts, its retry budget and its circuit-breaker limits. It is
made on the domain's first request, so a worker's memory follows the domains
it serves, not the size of the config (10,000 domains, most of them idle).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from app.config import Host, ProxyConfig, Service
from app.errors import NoHealthyHost, Overloaded, TooManyTunnels, UnknownDomain
from app.traffic.balancer import make_balancer
from app.traffic.health import Health
from app.traffic.retry import RetryBudget, RetryPolicy
from app.upstream.tls import target_of


def worker_share(limit: int | None, workers: int) -> int | None:
    """A proxy-wide limit split over the workers (each enforces its own part)."""
    return None if limit is None else max(1, math.ceil(limit / workers))


# A health event: (service name, host, event), for metrics.
HealthEvents = Callable[[str, Host, str], None]


class Route:
    def __init__(self, service: Service, workers: int = 1, on_health_event=None):
        self.service = service
        self.balancer = make_balancer(service)
        self.health = Health(service)
        if on_health_event is not None:
            self.health.on_event = lambda event, host: on_health_event(service.name, host, event)
        self.retry = RetryPolicy.of(service)
        self.upstream_tls = target_of(service)  # None: plain HTTP to the hosts
        self.budget = RetryBudget(service.retry)
        self.max_in_flight = worker_share(service.max_in_flight, workers)
        self.max_in_flight_per_host = worker_share(service.max_in_flight_per_host, workers)
        self.tunnels = 0  # WebSocket tunnels open or being opened in this worker

    def admit(self) -> None:
        """The circuit breaker: refuse before anything is sent when the service is full."""
        if self.max_in_flight is not None and self.balancer.total_in_flight >= self.max_in_flight:
            raise Overloaded(self.service.name)
        self.budget.record_request()

    def admit_tunnel(self) -> None:
        """``max_tunnels`` (per worker): refuse a new tunnel when the service is full;
        else hold its place until ``release_tunnel``."""
        limit = self.service.max_tunnels
        if limit is not None and self.tunnels >= limit:
            raise TooManyTunnels(self.service.name)
        self.tunnels += 1

    def release_tunnel(self) -> None:
        self.tunnels -= 1

    def pick(self, tried: list[Host]) -> Lease | None:
        """A lease on the next host to try, or None when every host in rotation was tried.

        Raises NoHealthyHost when no host is in rotation, and Overloaded when
        the ones that are all hold their limit of requests.
        """
        out = self.health.out_of_rotation()
        host = self.balancer.pick(out.union(tried) if out else tried, self.max_in_flight_per_host)
        if host is None:
            if tried:
                return None
            if len(out) == len(self.balancer.hosts):
                raise NoHealthyHost(self.service.name)
            raise Overloaded(self.service.name)
        return Lease(host, self.balancer)


class Lease:
    """A host picked for one attempt: counted in flight until ``release()``,
    which takes effect once however often it is called."""

    __slots__ = ("_balancer", "host")

    def __init__(self, host: Host, balancer):
        self.host = host
        self._balancer = balancer

    def release(self) -> None:
        balancer, self._balancer = self._balancer, None
        if balancer is not None:
            balancer.release(self.host)


class Router:
    def __init__(self, config: ProxyConfig, workers: int = 1, on_health_event=None):
        self.services = {service.domain: service for service in config.services}
        self.routes: dict[str, Route] = {}  # the domains served so far
        self.workers = workers
        self.on_health_event: HealthEvents | None = on_health_event

    def route(self, domain: str) -> Route:
        route = self.routes.get(domain)
        if route is None:
            service = self.services.get(domain)
            if service is None:
                raise UnknownDomain(domain)
            route = self.routes[domain] = Route(service, self.workers, self.on_health_event)
        return route

    def by_name(self) -> dict[str, Route]:
        return {route.service.name: route for route in self.routes.values()}
