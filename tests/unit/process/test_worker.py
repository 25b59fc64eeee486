"""The worker classes: the accept batch through gunicorn's server_class hook, and
the gunicorn internals the master's light stand-ins rely on."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from gunicorn.workers import base, base_async, ggevent

import app.process.gevent_worker
import app.process.worker
from app.process.gevent_worker import (
    ACCEPT_BATCH,
    GeventGunicornServerWorker,
    GeventLbproxyServerWorker,
    NumericFirstResolver,
)


def unstarted(worker_class):
    """A worker object with no process: only what server_class and handler_for read."""
    worker = worker_class.__new__(worker_class)
    worker.cfg = SimpleNamespace(
        limit_request_line=8190,
        limit_request_fields=100,
        limit_request_field_size=8190,
        keepalive=5,
    )
    worker.wsgi = lambda environ, start_response: []
    return worker


@pytest.mark.parametrize("worker_class", [GeventGunicornServerWorker, GeventLbproxyServerWorker])
def test_gunicorns_server_class_hook_builds_a_batch_accepting_server(worker_class):
    listener = socket.create_server(("127.0.0.1", 0))
    worker = unstarted(worker_class)
    try:
        # Exactly the call ggevent.GeventWorker.run makes (pinned below).
        server = worker.server_class(
            listener, application=None, spawn=10, log=None, handler_class=None, environ={}
        )
        assert server.max_accept == ACCEPT_BATCH > 1
        assert server.socket is listener
    finally:
        listener.close()


def test_gunicorn_still_calls_the_server_class_hook_with_these_arguments():
    source = inspect.getsource(ggevent.GeventWorker.run)
    assert "if self.server_class is not None:" in source
    call = "".join(source.split("server = self.server_class(")[1].split(")")[0].split())
    assert call == (
        "s,application=self.wsgi,spawn=pool,log=self.log,"
        "handler_class=self.wsgi_handler,environ=environ,**ssl_args"
    )
    assert ggevent.GeventWorker.server_class is None  # gunicorn's default: its own StreamServer


def test_the_class_swap_relies_only_on_what_gunicorn_still_does():
    """app/process/worker.py's docstring names these internals."""
    assert "__init__" not in vars(ggevent.GeventWorker)
    assert ggevent.GeventWorker.__mro__[1:3] == (base_async.AsyncWorker, base.Worker)
    body = textwrap.dedent(inspect.getsource(base_async.AsyncWorker.__init__)).splitlines()
    assert [line.strip() for line in body[1:]] == [
        "super().__init__(*args, **kwargs)",
        "self.worker_connections = self.cfg.worker_connections",
    ]


def test_the_master_loads_the_worker_classes_without_gevent():
    """gunicorn's master imports the worker class: it must not pull in gevent (6 MiB)."""
    # Without coverage's subprocess measurement: its gevent support imports gevent.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE")}
    code = (
        "import sys, app.process.worker, app.process.settings\n"
        "cls = app.process.worker.LbproxyServerWorker\n"
        "print(any(name.split('.')[0] == 'gevent' for name in sys.modules), cls.gevent_class)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["False", "GeventLbproxyServerWorker"]


class RecordingPool:
    """A stand-in for gevent's threadpool: runs the call here, and notes it."""

    def __init__(self):
        self.calls = []

    def apply(self, function, args, kwargs=None):
        self.calls.append(args[0])
        return function(*args, **(kwargs or {}))


def numeric_first_resolver() -> tuple[NumericFirstResolver, RecordingPool]:
    pool = RecordingPool()
    return NumericFirstResolver(SimpleNamespace(threadpool=pool, NOT_ERROR=())), pool


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_the_resolver_converts_an_address_without_the_threadpool(address):
    resolver, pool = numeric_first_resolver()
    found = resolver.getaddrinfo(address, 80, 0, socket.SOCK_STREAM)
    assert [entry[4][:2] for entry in found] == [(address, 80)]
    assert pool.calls == []


def test_the_resolver_looks_names_up_in_the_threadpool():
    resolver, pool = numeric_first_resolver()
    found = resolver.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)
    assert ("127.0.0.1", 80) in [entry[4] for entry in found]
    assert pool.calls == ["localhost"]


def test_each_stand_in_names_a_gevent_worker():
    for name in ("LbproxyServerWorker", "GunicornServerWorker"):
        stand_in = getattr(app.process.worker, name)
        real = getattr(app.process.gevent_worker, stand_in.gevent_class)
        assert real.__name__ == "Gevent" + name
        assert issubclass(real, ggevent.GeventWorker)


def test_the_lbproxy_worker_gives_every_listener_one_turns():
    """Connections take turns across the worker (app/process/turns.py), whatever
    listener they came in on."""
    worker = unstarted(GeventLbproxyServerWorker)
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        handlers = [worker.handler_for(listener, {}) for listener in listeners]
        servers = [handler.__self__ for handler in handlers]
        assert servers[0].turns is not None
        assert servers[0].turns is servers[1].turns is worker.turns
    finally:
        if worker.turns is not None:
            worker.turns.close()
        for listener in listeners:
            listener.close()
