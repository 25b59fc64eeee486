"""The worker classes gunicorn.conf.py names; the master loads them without gevent.

gunicorn's master imports the worker class to create each worker object,
which it then forks. Importing gevent there (as gunicorn's own gevent worker
class does) costs the master 6 MiB of RSS for code it never runs (measured:
32 MiB before, 26 after). So the classes here are light stand-ins: after the fork, in the
worker process, ``init_process`` turns the object into the gevent worker of the
same name in app/gevent_worker.py and carries on as that.
"""

from __future__ import annotations

import importlib

from gunicorn.workers.base import Worker


class _GeventWorkerAfterFork(Worker):
    gevent_class = ""  # its name in app/gevent_worker.py

    def init_process(self):
        module = importlib.import_module("app.gevent_worker")
        self.__class__ = getattr(module, self.gevent_class)
        # gunicorn's AsyncWorker.__init__, which this object did not run:
        self.worker_connections = self.cfg.worker_connections
        self.init_process()


class LeanWorker(_GeventWorkerAfterFork):
    """gevent worker serving HTTP with lbproxy's own server (the default)."""

    gevent_class = "LeanWorker"


class GeventWorker(_GeventWorkerAfterFork):
    """gevent worker serving HTTP with gunicorn's parser (PROXY_HTTP_SERVER=gunicorn)."""

    gevent_class = "GeventWorker"
