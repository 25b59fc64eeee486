"""The WSGI entry point: ``gunicorn app.wsgi:application``.

One request, top to bottom:

1. parse   (request.py)  environ -> target, domain, headers, body stream
2. route   (routing.py)  domain -> service and its balancer
3. pick    (balancer.py) service -> one host, skipping hosts already tried
4. forward (forward.py)  pooled keep-alive connection -> response headers
5. stream  (response.py) upstream body -> client, connection back to the pool
"""

from __future__ import annotations

import logging

from app import settings
from app.admin import Admin
from app.config import ProxyConfig, load_config
from app.errors import ProxyError, UpstreamConnectError
from app.forward import Forwarder, make_session
from app.master import active_config
from app.request import ProxyRequest, parse_request
from app.response import UpstreamResponse
from app.routing import Route, Router

log = logging.getLogger("lbproxy")


class Proxy:
    def __init__(self, config: ProxyConfig, concurrency: int = settings.DEFAULT_WORKER_CONNECTIONS):
        self.config = config
        self.router = Router(config)
        self.admin = Admin(self.router)
        self.admin_port = str(config.admin.port)
        self.forwarder = Forwarder(make_session(len(config.hosts), concurrency))

    def __call__(self, environ, start_response):
        if environ.get("SERVER_PORT") == self.admin_port:
            return self.admin(environ, start_response)
        try:
            request = parse_request(environ)
            route = self.router.route(request.domain)
            response = self.forward(route, request)
        except ProxyError as error:
            return self.refuse(error, start_response)
        start_response(response.status_line, response.headers)
        return response

    def forward(self, route: Route, request: ProxyRequest) -> UpstreamResponse:
        """Try the service's hosts in balancer order until one takes the request.

        Only a failure to connect moves on to the next host: nothing was sent,
        so even a POST is safe to redirect. Any later failure is final.
        """
        tried = []
        while (host := route.balancer.pick(exclude=tried)) is not None:
            tried.append(host)
            try:
                response = self.forwarder.send(host, request, route.service.timeout)
            except UpstreamConnectError as error:
                log.warning("%s: %s", route.service.name, error)
                route.balancer.release(host)
                continue
            except BaseException:
                route.balancer.release(host)
                raise
            response.on_close.append(lambda: route.balancer.release(host))
            return response
        raise UpstreamConnectError(f"{route.service.name}: tried {len(tried)} host(s)")

    @staticmethod
    def refuse(error: ProxyError, start_response):
        body = error.body()
        start_response(
            error.status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]


def create_app() -> Proxy:
    """In a gunicorn worker, the config its master validated; elsewhere, the file."""
    config = active_config() or load_config()
    return Proxy(config, settings.worker_connections())


application = create_app()
