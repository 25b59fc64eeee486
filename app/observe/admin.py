"""The admin listener: health and status, on a port of its own.

It is bound next to the proxy's listener (``proxy.admin``, default port 9901,
as Envoy's admin) and told apart by the port a request arrived on, which
gunicorn takes from the listening socket, not from the Host header. So these
paths never shadow a path of a routed domain, and a client of the proxy port
cannot reach them.

  GET /healthz  liveness: 200 while the worker serves
  GET /readyz   readiness: 200 "ready", naming any service without a usable
                host; 503 for those with ``proxy.admin.ready_requires_upstreams``
  GET /status   JSON: services, their hosts, whether each is in rotation, and
                the requests in flight

A usable host is in rotation and not failing (Health.usable): a lone host
that fails in a row stays in rotation (max_ejected_percent), yet a service
whose every request gets a 502 has nothing usable. Readiness does not depend
on upstreams by default: each replica sees the same upstreams, so a dead one
would take every replica out of the Service, and every other service with it.

Health and in-flight counts are the pod's, read from its shared area
(app/traffic/shared.py), so every worker gives the same answer. The tunnel
count is the answering worker's (tunnels are bounded per worker); /status says
so in its "view".
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

from app.config import Host, Service
from app.traffic.health import Health
from app.traffic.routing import Router


class AdminApp:
    def __init__(self, router: Router, metrics: bool = False, require_upstreams: bool = False):
        self.router = router
        self.require_upstreams = require_upstreams  # proxy.admin.ready_requires_upstreams
        self.pages = {"/healthz": self.healthz, "/readyz": self.readyz, "/status": self.status}
        self.metrics = metrics  # proxy.prometheus: GET /metrics

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics" and self.metrics:
            return self.prometheus(environ, start_response)
        page = self.pages.get(path)
        if page is None:
            return _answer(start_response, "404 Not Found", b"not found\n")
        return page(start_response)

    def prometheus(self, environ, start_response):
        """Every worker's metrics (app/observe/prometheus.py), in the format asked for."""
        from app.observe.prometheus import exposition

        body, content_type = exposition(environ.get("HTTP_ACCEPT", ""))
        return _answer(start_response, "200 OK", body, content_type)

    def healthz(self, start_response):
        return _answer(start_response, "200 OK", b"ok\n")

    def health_of(self, service: Service) -> Health:
        """The pod's view of a service's hosts, whether this worker served it or not."""
        route = self.router.routes.get(service.domain)
        if route is not None or service.discover:  # resolved hosts: the route has them
            return self.router.route(service.domain).health
        health = Health(service, state=self.router.zone.service(service))
        if self.router.on_health_event is not None:  # it may see an ejection end
            hook = self.router.on_health_event
            health.on_event = lambda event, host: hook(service.name, host, event)
        return health

    def readyz(self, start_response):
        services = self.router.services.values()
        empty = [service.name for service in services if not self.health_of(service).usable()]
        if not empty:
            return _answer(start_response, "200 OK", b"ready\n")
        unusable = f"no usable host for: {', '.join(empty)}"
        if self.require_upstreams:
            return _answer(start_response, "503 Service Unavailable", f"{unusable}\n".encode())
        note = "(ready: proxy.admin.ready_requires_upstreams is false)"
        return _answer(start_response, "200 OK", f"{unusable} {note}\n".encode())

    def status(self, start_response):
        services = []
        for domain, service in self.router.services.items():
            health = self.health_of(service)
            route = self.router.routes.get(domain)
            status = service_status(health.service, health, route.tunnels if route else 0)
            if route is not None and route.names:
                _resolved(status, route)
            services.append(status)
        pod = {
            # Whose counts these are: the pod's, from the shared area, but for tunnels.
            "view": {"hosts": "pod", "in_flight": "pod", "tunnels": "worker"},
            "worker_pid": os.getpid(),
            "prober_pid": _alive(self.router.zone.area.prober_pid),
            "services": services,
        }
        body = json.dumps(pod, indent=1).encode()
        return _answer(start_response, "200 OK", body + b"\n", "application/json")


def service_status(service: Service, health: Health, tunnels: int = 0) -> dict:
    """The pod's view of a service (``tunnels``: the answering worker's)."""
    affinity = service.affinity
    return {
        "name": service.name,
        "domain": service.domain,
        "strategy": service.strategy,
        "affinity": None if affinity is None else ("cookie" if affinity.cookie else "hash"),
        "in_flight": health.shared.total_in_flight(),
        "tunnels": tunnels,
        "hosts": [host_status(health, host) for host in service.hosts],
    }


def _resolved(status: dict, route) -> None:
    """A service with resolved names: where each host came from, and each name's last lookup."""
    for host, entry in zip(route.service.hosts, status["hosts"], strict=True):
        entry["resolved_from"] = route.resolved_from.get(host)
    status["names"] = []
    for entry, _ in route.names:
        document = route.documents.get(entry.name, {})
        at = document.get("resolved_at")
        status["names"].append(
            {
                "name": entry.srv or entry.address,
                "port": entry.port,  # None for SRV: the records give the ports
                "resolved_at": _iso(at) if at else None,
                "ttl": document.get("ttl"),
                "error": document.get("error"),
                "failures_in_a_row": document.get("failures", 0),
                "lookups": document.get("lookups", 0),
                "errors": document.get("errors", 0),
                "hosts": len(document.get("hosts", ())),
            }
        )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def host_status(health: Health, host: Host) -> dict:
    state = health.states[host]
    ejected_for = max(0.0, state.ejected_until - health.clock())
    in_flight = health.shared.host_in_flight(host)
    out = host in health.out_of_rotation()
    return {
        "host": host.name,
        "weight": host.weight,
        "in_rotation": not out,
        "failing": health.failing(host),  # in rotation or not, it fails in a row
        "ejected_for": round(ejected_for, 1),
        "health_check": health_check_state(health, state),
        "in_flight": in_flight,
    }


def health_check_state(health: Health, state) -> str:
    """ "off" without a health_check, else what the last probes said."""
    if health.service.health_check is None:
        return "off"
    return "down" if state.active_down else "up"


def _alive(pid: int) -> int | None:
    """The prober's PID while it lives (a SIGKILLed one is replaced within a second)."""
    return pid if pid and os.path.exists(f"/proc/{pid}") else None


def _answer(
    start_response, status: str, body: bytes, content_type: str = "text/plain; charset=utf-8"
):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
