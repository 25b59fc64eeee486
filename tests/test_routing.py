"""Host -> service routing."""

from __future__ import annotations

import pytest

from app.balancer import RoundRobin
from app.config import parse_config
from app.errors import UnknownDomain
from app.routing import Router

CONFIG = parse_config(
    """
proxy:
  services:
    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}
    - {name: b, domain: B.Test, hosts: [{address: 127.0.0.1, port: 2}]}
"""
)


def test_each_domain_routes_to_its_service():
    router = Router(CONFIG)
    assert router.route("a.test").service.name == "a"
    assert router.route("b.test").service.name == "b"
    assert isinstance(router.route("a.test").balancer, RoundRobin)


def test_each_route_keeps_one_balancer():
    router = Router(CONFIG)
    assert router.route("a.test").balancer is router.route("a.test").balancer


def test_unknown_domain_is_refused():
    with pytest.raises(UnknownDomain) as caught:
        Router(CONFIG).route("c.test")
    assert caught.value.status.startswith("404")
