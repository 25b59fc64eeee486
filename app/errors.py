"""What can go wrong with one proxied request, as types.

Each error carries the status the client gets, a short plain-text body (never
a traceback) and a ``kind``: the name metrics and the access log use for it.
"""

from __future__ import annotations

import math


class ProxyError(Exception):
    status = "502 Bad Gateway"
    kind = "proxy_error"
    message = "the proxy could not complete the request"

    def __init__(self, detail: str = ""):
        super().__init__(detail or self.message)
        self.detail = detail

    def body(self) -> bytes:
        return f"{self.status}: {self.message}\n".encode()

    def headers(self) -> list[tuple[str, str]]:
        """Headers the refusal carries beyond Content-Type and Content-Length."""
        return []


class BadRequest(ProxyError):
    status = "400 Bad Request"
    kind = "bad_request"
    message = "the request could not be understood"

    def body(self) -> bytes:
        return f"{self.status}: {self.detail or self.message}\n".encode()


class UnknownDomain(ProxyError):
    status = "404 Not Found"
    kind = "unknown_domain"
    message = "no service is configured for this host"


class MethodNotAllowed(ProxyError):
    status = "405 Method Not Allowed"
    kind = "method_not_allowed"
    message = "CONNECT is not supported: lbproxy is a reverse proxy, not a tunnel"


class ClientAbort(ProxyError):
    """The client went away or sent a broken body while we were forwarding it."""

    status = "400 Bad Request"
    kind = "client_abort"
    message = "the request body ended early or was malformed"


class ClientTimeout(ProxyError):
    """The client sent its body too slowly: ``timeout.response`` passed before its end."""

    status = "408 Request Timeout"
    kind = "client_timeout"
    message = "the request body did not arrive in time"


class BodyTooLarge(ProxyError):
    status = "413 Content Too Large"
    kind = "body_too_large"
    message = "the request body is larger than this proxy accepts"


class NoHealthyHost(ProxyError):
    status = "503 Service Unavailable"
    kind = "no_healthy_host"
    message = "no host of this service is in rotation"


class Overloaded(ProxyError):
    """The service's circuit breaker is open: too many requests in flight."""

    status = "503 Service Unavailable"
    kind = "overloaded"
    message = "too many requests in flight for this service; retry shortly"

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", "1")]


class RateLimited(ProxyError):
    """The client's key is over its service's ``rate_limit`` (app/traffic/ratelimit.py)."""

    status = "429 Too Many Requests"
    kind = "rate_limited"
    message = "too many requests; retry after the time in Retry-After"

    def __init__(self, wait: float, quota: int, window: int):
        super().__init__(f"rate limited for {wait:.3f} s")
        self.retry_after = max(1, math.ceil(wait))  # whole seconds, rounded up, at least 1
        self.quota = quota
        self.window = window

    def headers(self) -> list[tuple[str, str]]:
        # RateLimit-Policy and RateLimit: draft-ietf-httpapi-ratelimit-headers (structured fields).
        return [
            ("Retry-After", str(self.retry_after)),
            ("RateLimit-Policy", f'"lbproxy";q={self.quota};w={self.window}'),
            ("RateLimit", f'"lbproxy";r=0;t={self.retry_after}'),
        ]


class TooManyTunnels(Overloaded):
    kind = "too_many_tunnels"
    message = "too many WebSocket tunnels open for this service; retry shortly"


class WorkerStopping(Overloaded):
    """A tunnel asked of a worker that is stopping: the client retries on another."""

    kind = "worker_stopping"
    message = "this worker is stopping; retry the upgrade"


class UpstreamConnectError(ProxyError):
    status = "502 Bad Gateway"
    kind = "connect_error"
    message = "no upstream host accepted the connection"


class UpstreamTLSError(UpstreamConnectError):
    """The TLS handshake with the host failed (certificate, name, protocol):
    nothing was sent, so it fails over like a refused connection."""

    kind = "upstream_tls"
    message = "no upstream host completed a verified TLS handshake"


class UpstreamTimeout(ProxyError):
    status = "504 Gateway Timeout"
    kind = "timeout"
    message = "the upstream host did not answer in time"


class UpstreamProtocolError(ProxyError):
    """The upstream accepted the request, then broke the connection or the protocol."""

    status = "502 Bad Gateway"
    kind = "upstream_error"
    message = "the upstream host sent no valid response"


class UpstreamFramingError(UpstreamProtocolError):
    """The upstream's response broke HTTP/1.1 framing (RFC 9112): never passed on."""

    kind = "upstream_protocol"
    message = "the upstream host sent an invalid response"
