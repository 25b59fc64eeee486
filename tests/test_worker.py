"""The gevent worker's accept batch: gunicorn's max_accept = 1 must not stick."""

from __future__ import annotations

import socket

from gunicorn.workers import ggevent

from app.gevent_worker import ACCEPT_BATCH, BatchAcceptingServer, GeventWorker


def test_gunicorn_setting_max_accept_to_1_leaves_the_batch():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        server = BatchAcceptingServer(listener, handle=lambda *args: None)
        server.max_accept = 1  # what gunicorn's run() does with several workers
        assert server.max_accept == ACCEPT_BATCH > 1
    finally:
        listener.close()


def test_the_worker_is_gunicorns_gevent_worker():
    assert issubclass(GeventWorker, ggevent.GeventWorker)
    assert issubclass(BatchAcceptingServer, ggevent.StreamServer)


def test_the_master_loads_the_worker_classes_without_gevent():
    """gunicorn's master imports the worker class: it must not pull in gevent (6 MiB)."""
    import os
    import subprocess
    import sys

    # Without coverage's subprocess measurement: its gevent support imports gevent.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE")}
    code = (
        "import sys, app.worker, app.settings\n"
        "cls = app.worker.LeanWorker\n"
        "print(any(name.split('.')[0] == 'gevent' for name in sys.modules), cls.gevent_class)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["False", "LeanWorker"]


def test_each_stand_in_names_a_gevent_worker_of_its_own_name():
    import app.gevent_worker
    import app.worker

    for name in ("LeanWorker", "GeventWorker"):
        stand_in = getattr(app.worker, name)
        real = getattr(app.gevent_worker, stand_in.gevent_class)
        assert stand_in.gevent_class == name
        assert issubclass(real, ggevent.GeventWorker)
