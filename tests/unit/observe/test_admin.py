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


def admin_of(text: str, require: bool) -> tuple[Router, callable, list]:
    """A router and an admin app over it; get(path) -> body, statuses its log."""
    config = parse_config(text)
    router = Router(config)
    admin = AdminApp(router, require_upstreams=require)
    statuses: list[str] = []

    def get(path):
        body = admin({"PATH_INFO": path}, lambda status, headers: statuses.append(status))
        return b"".join(body)

    return router, get, statuses


CHECKED = """
proxy:
  services:
    - name: x
      domain: x.test
      hosts: [{address: 127.0.0.1, port: 1}]
      health_check: {unhealthy_threshold: 1}
    - name: y
      domain: y.test
      hosts: [{address: 127.0.0.1, port: 2}]
"""


def test_readiness_fails_when_a_service_has_no_host_in_rotation_if_required():
    router, get, statuses = admin_of(CHECKED, require=True)
    assert get("/readyz") == b"ready\n" and statuses[-1] == "200 OK"
    route = router.route("x.test")
    route.health.record_probe(route.service.hosts[0], healthy=False)
    assert get("/readyz") == b"no usable host for: x\n"  # which service
    assert statuses[-1] == "503 Service Unavailable"
    status = json.loads(get("/status"))
    host = status["services"][0]["hosts"][0]
    assert (host["in_rotation"], host["health_check"]) == (False, "down")
    assert status["services"][1]["hosts"][0]["health_check"] == "off"  # y has no checks
    assert status["view"] == {"hosts": "pod", "in_flight": "pod", "tunnels": "worker"}


def test_a_lone_host_failing_in_a_row_is_not_usable_though_never_ejected():
    """max_ejected_percent keeps a lone host in rotation: every request still gets
    a 502, and readiness says so."""
    router, get, statuses = admin_of(CHECKED, require=True)
    route = router.route("y.test")
    host = route.service.hosts[0]
    for _ in range(route.service.outlier.consecutive_failures - 1):
        route.health.record_failure(host)
    assert get("/readyz") == b"ready\n"  # not yet in a row enough
    route.health.record_failure(host)
    assert route.health.in_rotation() == [host]  # the cap keeps it
    assert get("/readyz") == b"no usable host for: y\n" and statuses[-1].startswith("503")
    assert json.loads(get("/status"))["services"][1]["hosts"][0]["failing"] is True
    route.health.record_success(host)
    assert get("/readyz") == b"ready\n" and statuses[-1] == "200 OK"


def test_a_failing_host_is_usable_again_after_base_ejection_without_traffic():
    """An unready pod gets no request whose success would clear the failures: the
    failing state ends base_ejection after the last failure, as an ejection does."""
    router, get, statuses = admin_of(CHECKED, require=True)
    route = router.route("y.test")
    host = route.service.hosts[0]
    now = [1000.0]
    route.health.clock = lambda: now[0]
    for _ in range(route.service.outlier.consecutive_failures):
        route.health.record_failure(host)
    assert get("/readyz").startswith(b"no usable host for: y")
    now[0] += route.service.outlier.base_ejection
    assert get("/readyz") == b"ready\n" and statuses[-1] == "200 OK"


def test_by_default_readiness_names_the_service_but_stays_200():
    router, get, statuses = admin_of(CHECKED, require=False)
    route = router.route("x.test")
    route.health.record_probe(route.service.hosts[0], healthy=False)
    body = get("/readyz")
    assert statuses[-1] == "200 OK"
    assert body.startswith(b"no usable host for: x (ready: proxy.admin.ready_requires_upstreams")


def test_ready_requires_upstreams_is_read_from_proxy_admin():
    text = "proxy:\n  admin: {ready_requires_upstreams: true}\n" + CHECKED.split("proxy:\n")[1]
    assert parse_config(text).admin.ready_requires_upstreams is True
    assert parse_config(CHECKED).admin.ready_requires_upstreams is False
