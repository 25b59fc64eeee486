"""Shared real-process fixtures: mock instances and a proxy routing to them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.processes import Proxy, StatsdDaemon, free_port, start_mock, write_config

BALANCED = "balanced.test"
FAILOVER = "failover.test"
DEAD = "dead.test"
SLOW = "slow.test"
COUNTED = "counted.test"


@pytest.fixture(scope="module")
def directory(request):
    """A directory for one test module's configs and servers' files, straight under
    the temp dir: dnsmasq, as nobody, re-reads its hosts file there (pytest's own
    directories sit in a root-only parent)."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    return Path(tempfile.mkdtemp(prefix=f"lbproxy-{module}-"))


@pytest.fixture(scope="module")
def statsd(tmp_path_factory):
    """The real StatsD daemon, for one test module: its counters hold all it was sent."""
    daemon = StatsdDaemon(tmp_path_factory.mktemp("statsd"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def mocks():
    servers = [start_mock(name) for name in ("a", "b", "c", "counted")]
    yield {server.name.removeprefix("mock-"): server for server in servers}
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def proxy(mocks, tmp_path_factory):
    """The proxy, 2 workers, with HTTP_PROXY pointing at nothing (it must be ignored)."""

    def host(name):
        return {"address": "127.0.0.1", "port": mocks[name].port}

    dead = {"address": "127.0.0.1", "port": free_port()}  # nothing listens there
    services = [
        {"name": "balanced", "domain": BALANCED, "hosts": [host("a"), host("b"), host("c")]},
        {"name": "failover", "domain": FAILOVER, "hosts": [dead, host("a")]},
        {"name": "dead", "domain": DEAD, "hosts": [dead]},
        {
            "name": "slow",
            "domain": SLOW,
            "hosts": [host("a")],
            "timeout": {"connect": 1, "read": 0.5},
        },
        {"name": "counted", "domain": COUNTED, "hosts": [host("counted")]},
    ]
    config = write_config(tmp_path_factory.mktemp("proxy"), services)
    env = {
        "HTTP_PROXY": f"http://127.0.0.1:{dead['port']}",
        "http_proxy": f"http://127.0.0.1:{dead['port']}",
    }
    server = Proxy(config, workers=2, env=env)
    yield server
    server.stop()
