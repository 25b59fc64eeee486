"""The ``requests.Session`` each worker keeps, made for a proxy.

It owns the upstream connection settings: the pool depth per host and the
socket options, which the hot path's pools (app/upstream/pool.py) take from its
adapter (``Pools.from_session``). Health-check probes go through the Session
itself (app/traffic/health.py).
"""

from __future__ import annotations

import sys
import warnings
from http.cookiejar import DefaultCookiePolicy

# requests imports a character-set detector (charset_normalizer: 2.4 MiB in
# every worker) that only Response.text and .apparent_encoding use; a proxy
# never decodes a body. Unless something loaded it already it stays out, and
# requests goes without (and says so in a warning, silenced here).
sys.modules.setdefault("charset_normalizer", None)  # type: ignore[arg-type]
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Unable to find acceptable character detection")
    from requests import Session
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection

__all__ = ["Session", "make_session"]


def make_session(hosts: int, connections_per_host: int) -> Session:
    """A Session that pools for a proxy and leaks nothing between clients.

    - one pool per upstream host, never evicted (``pool_connections``), each as
      deep as the worker's concurrency (``pool_maxsize``): requests' defaults of
      10 and 10 would reconnect per request under load;
    - cookies are refused, so one client's Set-Cookie never joins another's
      request;
    - no default headers (User-Agent, Accept-Encoding) of its own;
    - proxy settings in the environment (HTTP_PROXY, ...) are ignored;
    - sockets with urllib3's options (TCP_NODELAY: a request head is never
      held back waiting for an ACK).
    """
    session = Session()
    session.trust_env = False
    session.headers.clear()
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.max_redirects = 0
    adapter = HTTPAdapter(
        pool_connections=max(hosts, 1),
        pool_maxsize=max(connections_per_host, 1),
        max_retries=0,
        pool_block=False,
    )
    adapter.init_poolmanager(
        max(hosts, 1),
        max(connections_per_host, 1),
        block=False,
        socket_options=HTTPConnection.default_socket_options,
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
