"""proxy.py reverse-proxy plugin for the benchmark: every path to $BENCH_UPSTREAM.

proxy.py's own ReverseProxyPlugin routes fixed example paths to httpbingo.org;
this one forwards any path, unchanged, to the upstream nginx on 127.0.0.1.
It runs inside proxy.py (bench/.venv-peers), which imports it through
PYTHONPATH=bench/plugins: `--plugins bench_proxypy.BenchReverseProxy`.
"""

import os

from proxy.http import Url
from proxy.http.server import ReverseProxyBasePlugin

UPSTREAM = os.environ["BENCH_UPSTREAM"].encode()  # e.g. http://127.0.0.1:8081


class BenchReverseProxy(ReverseProxyBasePlugin):
    def routes(self):
        return [r"/.*$"]

    def handle_route(self, request, pattern):
        choice = Url.from_bytes(UPSTREAM)
        choice.remainder = request.path
        return choice
