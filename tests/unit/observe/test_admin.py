"""The admin listener: health and status, unreachable from the proxy port."""

from __future__ import annotations

import json

import requests

from app.config import parse_config
from app.observe.admin import AdminApp
from app.traffic.routing import Router
from tests.conftest import BALANCED


def admin_get(proxy, path):
    return requests.get(f"http://127.0.0.1:{proxy.admin_port}{path}", timeout=5)


def test_liveness_and_readiness_answer_on_the_admin_port(proxy):
    assert admin_get(proxy, "/healthz").text == "ok\n"
    assert admin_get(proxy, "/readyz").status_code == 200
    assert admin_get(proxy, "/nothing").status_code == 404


def test_status_lists_services_and_hosts(proxy):
    status = admin_get(proxy, "/status").json()
    names = {service["name"]: service for service in status["services"]}
    assert len(names["balanced"]["hosts"]) == 3
    assert {"host", "weight", "in_flight"} <= set(names["balanced"]["hosts"][0])


def test_admin_paths_are_not_served_on_the_proxy_port(proxy):
    """On the proxy port /healthz belongs to the routed domain, like any path."""
    answer = requests.get(proxy.url + "/healthz", headers={"Host": BALANCED}, timeout=5)
    assert answer.json()["path"] == "/healthz"  # answered by the upstream mock
    unknown = requests.get(proxy.url + "/healthz", timeout=5)  # Host: 127.0.0.1:port
    assert unknown.status_code == 404


def test_readiness_fails_when_a_service_has_no_host_in_rotation():
    config = parse_config(
        """
proxy:
  services:
    - name: x
      domain: x.test
      hosts: [{address: 127.0.0.1, port: 1}]
      health_check: {unhealthy_threshold: 1}
"""
    )
    router = Router(config)
    admin = AdminApp(router)
    statuses = []

    def get(path):
        body = admin({"PATH_INFO": path}, lambda status, headers: statuses.append(status))
        return b"".join(body)

    assert get("/readyz") == b"ready\n" and statuses[-1] == "200 OK"
    route = router.route("x.test")
    route.health.record_probe(route.service.hosts[0], healthy=False)
    assert get("/readyz") == b"no host for: x\n"
    assert statuses[-1] == "503 Service Unavailable"
    host = json.loads(get("/status"))["services"][0]["hosts"][0]
    assert (host["in_rotation"], host["health_check"]) == (False, "down")
