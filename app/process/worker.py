"""The worker classes gunicorn.conf.py names; the master loads them without gevent.

gunicorn's master imports the worker class to create each worker object,
which it then forks. Importing gevent there (as gunicorn's own gevent worker
class does) costs the master 6 MiB of RSS for code it never runs (measured:
32 MiB before, 26 after). gunicorn has no documented way to name one class for
the master and another for the worker, so the classes here are light
stand-ins: after the fork, in the worker process, ``init_process`` turns the
object into the gevent worker named by ``gevent_class`` in
app/process/gevent_worker.py and carries on as that.

The swap relies on three gunicorn internals, pinned by tests/unit/test_worker.py:
both classes share ``gunicorn.workers.base.Worker.__init__``; the only thing
``AsyncWorker.__init__`` adds is ``self.worker_connections``; and
``ggevent.GeventWorker`` has no ``__init__`` of its own.
"""

from __future__ import annotations

import importlib

from gunicorn.workers.base import Worker


class _BecomesGeventWorker(Worker):
    gevent_class = ""  # its name in app/process/gevent_worker.py

    def init_process(self):
        module = importlib.import_module("app.process.gevent_worker")
        self.__class__ = getattr(module, self.gevent_class)
        # gunicorn's AsyncWorker.__init__, which this object did not run:
        self.worker_connections = self.cfg.worker_connections
        self.init_process()


class LbproxyServerWorker(_BecomesGeventWorker):
    """gevent worker serving HTTP with lbproxy's own server (the default)."""

    gevent_class = "GeventLbproxyServerWorker"


class GunicornServerWorker(_BecomesGeventWorker):
    """gevent worker serving HTTP with gunicorn's parser (PROXY_HTTP_SERVER=gunicorn)."""

    gevent_class = "GeventGunicornServerWorker"
