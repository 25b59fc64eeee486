"""Upstream TLS settings: resolved per service, and part of the pools' key."""

from __future__ import annotations

import ssl

from app.config import Host, Service, UpstreamTLS
from app.upstream.pool import Pools
from app.upstream.tls import UpstreamTLSTarget, target_of

HOSTS = (Host("127.0.0.1", 9443),)


def test_server_name_defaults_to_the_services_domain():
    plain = Service(name="p", domain="p.test", hosts=HOSTS)
    secure = Service(name="s", domain="s.test", hosts=HOSTS, upstream_tls=UpstreamTLS())
    named = Service(
        name="n", domain="n.test", hosts=HOSTS, upstream_tls=UpstreamTLS(server_name="up.internal")
    )
    assert target_of(plain) is None
    assert target_of(secure) == UpstreamTLSTarget("s.test", None, True)
    assert target_of(named).server_name == "up.internal"


def test_pools_are_keyed_by_the_whole_target_tls_settings_included():
    pools = Pools(4)
    one = UpstreamTLSTarget("one.internal", None, True)
    two = UpstreamTLSTarget("two.internal", None, True)
    unverified = UpstreamTLSTarget("one.internal", None, False)
    got = {
        pools.get("127.0.0.1", 9443),
        pools.get("127.0.0.1", 9443, one),
        pools.get("127.0.0.1", 9443, two),
        pools.get("127.0.0.1", 9443, unverified),
    }
    assert len(got) == 4 and pools.get("127.0.0.1", 9443, one) in got
    assert pools.idle("127.0.0.1", 9443) == 0


def test_contexts_verify_unless_told_not_to():
    verified = UpstreamTLSTarget("a.internal", None, True).context()
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    unverified = UpstreamTLSTarget("a.internal", None, False).context()
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
