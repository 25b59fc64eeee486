"""The admin listener: health and status, on a port of its own.

It is bound next to the proxy's listener (``proxy.admin``, default port 9901,
as Envoy's admin) and told apart by the port a request arrived on, which
gunicorn takes from the listening socket, not from the Host header. So these
paths never shadow a path of a routed domain, and a client of the proxy port
cannot reach them.

  GET /healthz  liveness: 200 while the worker serves
  GET /readyz   readiness: 200 when every service has a host in rotation, else 503
  GET /status   JSON: services, their hosts, whether each is in rotation, and
                this worker's in-flight counts

All of it is what the worker that answers knows: each worker keeps its own
host health (see app/traffic/health.py).
"""

from __future__ import annotations

import json
import os

from app.config import Host, Service
from app.traffic.routing import Route, Router


class AdminApp:
    def __init__(self, router: Router):
        self.router = router
        self.pages = {"/healthz": self.healthz, "/readyz": self.readyz, "/status": self.status}

    def __call__(self, environ, start_response):
        page = self.pages.get(environ.get("PATH_INFO", ""))
        if page is None:
            return _answer(start_response, "404 Not Found", b"not found\n")
        return page(start_response)

    def healthz(self, start_response):
        return _answer(start_response, "200 OK", b"ok\n")

    def readyz(self, start_response):
        # A domain not served yet has no host marked out: only served ones can fail.
        empty = [
            route.service.name
            for route in self.router.routes.values()
            if not route.health.in_rotation()
        ]
        if empty:
            return _answer(
                start_response,
                "503 Service Unavailable",
                f"no host for: {', '.join(empty)}\n".encode(),
            )
        return _answer(start_response, "200 OK", b"ready\n")

    def status(self, start_response):
        services = [
            service_status(service, self.router.routes.get(domain))
            for domain, service in self.router.services.items()
        ]
        body = json.dumps({"worker_pid": os.getpid(), "services": services}, indent=1).encode()
        return _answer(start_response, "200 OK", body + b"\n", "application/json")


def service_status(service: Service, route: Route | None) -> dict:
    """What one worker knows of a service; ``route`` None: not served by it yet."""
    return {
        "name": service.name,
        "domain": service.domain,
        "strategy": service.strategy,
        "in_flight": route.balancer.total_in_flight if route else 0,
        "tunnels": route.tunnels if route else 0,
        "hosts": [host_status(route, host) for host in service.hosts],
    }


def host_status(route: Route | None, host: Host) -> dict:
    if route is None:
        ejected_for, down, in_flight, out = 0.0, False, 0, False
    else:
        state = route.health.states[host]
        ejected_for = max(0.0, state.ejected_until - route.health.clock())
        down, in_flight = state.active_down, route.balancer.in_flight[host]
        out = host in route.health.out_of_rotation()
    return {
        "host": host.name,
        "weight": host.weight,
        "in_rotation": not out,
        "ejected_for": round(ejected_for, 1),
        "health_check": "down" if down else "up",
        "in_flight": in_flight,
    }


def _answer(
    start_response, status: str, body: bytes, content_type: str = "text/plain; charset=utf-8"
):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
