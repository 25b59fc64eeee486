"""Host -> service: the first step of every request.

A plain dict lookup on the lower-cased host name, so routing costs the same
with 3 domains or 10,000. Only configured domains are ever forwarded to:
lbproxy is never an open proxy.

A Route is what one worker holds for one service: its balancer and host
health (views on the pod's shared area, app/traffic/shared.py), its affinity,
its retry budget and its limits. It is made on the domain's first request, so
a worker's memory follows the domains it serves, not the size of the config
(10,000 domains, most of them idle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from app.config import Host, ProxyConfig, Service
from app.errors import NoHealthyHost, Overloaded, TooManyTunnels, UnknownDomain
from app.traffic.affinity import make_affinity
from app.traffic.balancer import make_balancer
from app.traffic.health import Health
from app.traffic.retry import RetryBudget, RetryPolicy
from app.traffic.shared import ServiceState, Zone
from app.upstream.tls import target_of

# A health event: (service name, host, event), for metrics.
HealthEvents = Callable[[str, Host, str], None]


class Route:
    """``service`` is the service as it serves now: its fixed hosts, then the
    addresses its ``resolve: true`` entries resolved to (app/traffic/discovery.py),
    read from the shared area by ``sync``; ``configured`` is the service as the file has it."""

    def __init__(
        self, service: Service, state: ServiceState, on_health_event=None, zone: Zone | None = None
    ):
        self.configured = service
        self.zone = zone
        self.on_health_event = on_health_event
        # The names of `resolve: true` entries, their records, and what was last read.
        self.names = [(entry, zone.name(service, entry)) for entry in service.discover]
        self.documents: dict[str, dict] = {}  # entry name -> its record's last document
        self.resolved_from: dict[Host, str] = {}
        self._sequences: dict[int, int] = {}
        self._versions: dict[int, int] = {}
        self.budget = RetryBudget(service.retry)  # per worker: see docs/affinity.md
        self.tunnels = 0  # WebSocket tunnels open or being opened in this worker
        self._build(service, state)

    def _build(self, service: Service, state: ServiceState) -> None:
        self.service = service
        self.state = state  # the service's words in the pod's shared area
        self.balancer = make_balancer(service, state)
        self.health = Health(service, state=state)
        hook = self.on_health_event
        if hook is not None:
            self.health.on_event = lambda event, host: hook(service.name, host, event)
        self.affinity = make_affinity(service)  # None, or app/traffic/affinity.py's
        self.retry = RetryPolicy.of(service)
        self.upstream_tls = target_of(service)  # None: plain HTTP to the hosts
        # Both pod-wide: checked against every worker's requests in flight. Two
        # workers checking at the same instant may each admit one: a limit can
        # be passed by one request per other worker, never more.
        self.max_in_flight = service.max_in_flight
        self.max_in_flight_per_host = service.max_in_flight_per_host

    def sync(self) -> list[Host]:
        """Take in what the resolver last wrote for each name (a word read per name
        when nothing moved); returns the hosts that left."""
        changed = False
        for entry, record in self.names:
            if record.sequence == self._sequences.get(record.slot):
                continue
            read = record.read()
            if read is None:  # being written: the next request reads it
                continue
            self._sequences[record.slot], document = read
            self.documents[entry.name] = document
            if document["version"] != self._versions.get(record.slot):
                self._versions[record.slot] = document["version"]
                changed = True
        return self._rebuild() if changed else []

    def _rebuild(self) -> list[Host]:
        configured = self.configured
        names = {host.name for host in configured.hosts}
        resolved: dict[Host, int] = {}
        self.resolved_from = {}
        for entry, record in self.names:
            for ip, port, position in self.documents.get(entry.name, {}).get("hosts", ()):
                host = Host(ip, port, entry.weight)
                if host.name in names:  # listed already, fixed or by another name: one host
                    continue
                names.add(host.name)
                resolved[host] = record.first_host + position
                self.resolved_from[host] = entry.srv or entry.address
        before = self.service.hosts
        service = dataclasses.replace(configured, hosts=configured.hosts + tuple(resolved))
        self._build(service, self.zone.service(configured, resolved))
        after = set(service.hosts)
        return [host for host in before if host not in after]

    def admit(self) -> None:
        """The circuit breaker: refuse before anything is sent when the service is full."""
        if self.max_in_flight is not None and self.state.total_in_flight() >= self.max_in_flight:
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

    def sticky_key(self, headers: list[tuple[str, str]]):
        """The request's affinity key (None: balance it), and the affinity cookie
        value it sent; the cookie is taken out of ``headers``."""
        if self.affinity is None:
            return None, None
        return self.affinity.sticky_key(headers)

    def pick(self, tried: list[Host], sticky=None) -> Lease | None:
        """A lease on the next host to try, or None when every host in rotation was tried.

        ``sticky``, the request's affinity key, names the host to take when it is
        usable (in rotation, not tried, not full); else the balancer picks.
        Raises NoHealthyHost when no host is in rotation, and Overloaded when
        the ones that are all hold their limit of requests.
        """
        out = self.health.out_of_rotation()
        if sticky is not None:
            host = self.affinity.host_for(sticky, self._usable(out, tried))
            if host is not None:
                self.balancer.take(host)
                return Lease(host, self.balancer, self.health)
        host = self.balancer.pick(out.union(tried) if out else tried, self.max_in_flight_per_host)
        if host is None:
            if tried:
                return None
            if len(out) == len(self.balancer.hosts):
                raise NoHealthyHost(self.service.name)
            raise Overloaded(self.service.name)
        return Lease(host, self.balancer, self.health)

    def _usable(self, out: frozenset[Host], tried: list[Host]) -> Callable[[Host], bool]:
        limit, in_flight = self.max_in_flight_per_host, self.state.host_in_flight

        known = self.state.host_own

        def usable(host: Host) -> bool:
            # A cookie's host may have left a resolved name since the first try.
            if host in out or host in tried or host not in known:
                return False
            return limit is None or in_flight(host) < limit

        return usable


class Lease:
    """A host picked for one attempt: counted in flight until ``release()``,
    which takes effect once however often it is called. ``health`` is the one
    the host was picked from: its outcome is recorded there, even if the
    route's hosts have changed since (a resolved name lost the address)."""

    __slots__ = ("_balancer", "health", "host")

    def __init__(self, host: Host, balancer, health=None):
        self.host = host
        self._balancer = balancer
        self.health = health

    def release(self) -> None:
        balancer, self._balancer = self._balancer, None
        if balancer is not None:
            balancer.release(self.host)


class Router:
    def __init__(self, config: ProxyConfig, zone: Zone | None = None, on_health_event=None):
        self.services = {service.domain: service for service in config.services}
        self.routes: dict[str, Route] = {}  # the domains served so far
        self.zone = zone or Zone.private(config)
        self.on_health_event: HealthEvents | None = on_health_event
        # Called with the hosts a resolved name no longer has (their idle connections go).
        self.on_hosts_removed: Callable[[list[Host]], None] = lambda hosts: None

    def route(self, domain: str) -> Route:
        route = self.routes.get(domain)
        if route is None:
            service = self.services.get(domain)
            if service is None:
                raise UnknownDomain(domain)
            state = self.zone.service(service)
            route = Route(service, state, self.on_health_event, self.zone)
            self.routes[domain] = route
        if route.names and (removed := route.sync()):
            self.on_hosts_removed(removed)
        return route

    def by_name(self) -> dict[str, Route]:
        return {route.service.name: route for route in self.routes.values()}
