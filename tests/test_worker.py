"""The gevent worker's accept batch: gunicorn's max_accept = 1 must not stick."""

from __future__ import annotations

import socket

from gunicorn.workers import ggevent

from app.worker import ACCEPT_BATCH, BatchAcceptingServer, GeventWorker


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
