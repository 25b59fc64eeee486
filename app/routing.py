"""Host -> service: the first step of every request.

A plain dict lookup on the lower-cased host name, so routing costs the same
with 3 domains or 10,000. Only configured domains are ever forwarded to:
lbproxy is never an open proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.balancer import Balancer, make_balancer
from app.config import ProxyConfig, Service
from app.errors import UnknownDomain


@dataclass(frozen=True)
class Route:
    service: Service
    balancer: Balancer


class Router:
    def __init__(self, config: ProxyConfig):
        self.routes = {
            service.domain: Route(service, make_balancer(service)) for service in config.services
        }

    def route(self, domain: str) -> Route:
        try:
            return self.routes[domain]
        except KeyError:
            raise UnknownDomain(domain) from None
