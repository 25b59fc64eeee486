"""https to upstream hosts: one client context per pool, verification on by default.

As HAProxy's ``server ... ssl verify required ca-file sni`` and nginx's
``proxy_ssl_verify`` with ``proxy_ssl_server_name``: ``server_name`` is both
the SNI sent and the name the host's certificate must carry, and the chain
must lead to ``ca`` (else the system's CAs). ``verify: false`` skips both,
with a warning at start. There is never a plaintext fallback.

Pools are keyed by the whole target, TLS settings included (app/upstream/pool.py),
and each pool has its own context: two services sharing one host address with
different names or CAs never share a connection. lbproxy does not resume TLS
sessions to upstreams at all (nginx, with two services on one upstream block,
resumed a session verified for one and skipped verification for the other);
keep-alive pooling is what saves handshakes.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from urllib3.util.ssl_ import create_urllib3_context

from app.config import Service

log = logging.getLogger("gunicorn.error")


@dataclass(frozen=True, slots=True)
class UpstreamTLSTarget:
    """A service's upstream TLS settings, resolved: part of its pools' key."""

    server_name: str
    ca: str | None
    verify: bool

    def context(self) -> ssl.SSLContext:
        """A new client context for these settings (built in the worker: cooperative)."""
        required = ssl.CERT_REQUIRED if self.verify else ssl.CERT_NONE
        context = create_urllib3_context(cert_reqs=required)
        if self.verify:
            if self.ca:
                context.load_verify_locations(cafile=self.ca)
            else:
                context.load_default_certs()
            context.check_hostname = True  # against server_name, by the ssl module
        return context

    @property
    def cert_reqs(self) -> int:
        return ssl.CERT_REQUIRED if self.verify else ssl.CERT_NONE


def target_of(service: Service) -> UpstreamTLSTarget | None:
    """The service's upstream TLS target, or None for plain HTTP."""
    tls = service.upstream_tls
    if tls is None:
        return None
    return UpstreamTLSTarget(tls.server_name or service.domain, tls.ca, tls.verify)


def warn_unverified(services) -> None:
    for service in services:
        if service.upstream_tls is not None and not service.upstream_tls.verify:
            log.warning(
                "lbproxy: %s: upstream_tls.verify is false: its hosts' certificates are not"
                " checked, so anyone on the path can read and change its traffic",
                service.name,
            )
