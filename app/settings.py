"""Process settings from the environment, shared by gunicorn.conf.py and the workers.

proxy.yaml says what to route; these say how big the process is.
"""

from __future__ import annotations

import os

DEFAULT_WORKER_CONNECTIONS = 1000


def workers() -> int:
    """PROXY_WORKERS, else one worker per CPU (gevent workers are not CPU-bound twice)."""
    return int(os.environ.get("PROXY_WORKERS") or os.cpu_count() or 1)


def worker_connections() -> int:
    """PROXY_WORKER_CONNECTIONS: requests one worker holds at once.

    gunicorn gets it as ``worker_connections`` and each upstream's connection
    pool is as deep, so no request waits for, or wastes, a connection.
    """
    return int(os.environ.get("PROXY_WORKER_CONNECTIONS") or DEFAULT_WORKER_CONNECTIONS)


def access_log() -> str | None:
    """PROXY_ACCESS_LOG: "-" for stdout (the default), a file path, or "off"."""
    target = os.environ.get("PROXY_ACCESS_LOG", "-")
    return None if target.lower() in ("off", "none", "") else target


WORKER_CLASSES = {
    "lbproxy": "app.worker.LeanWorker",  # lbproxy's own HTTP/1.1 server (app/server.py)
    "gunicorn": "app.worker.GeventWorker",  # gunicorn's HTTP parser and writer
}


def worker_class() -> str:
    """PROXY_HTTP_SERVER: "lbproxy" (the default) or "gunicorn"."""
    name = os.environ.get("PROXY_HTTP_SERVER") or "lbproxy"
    if name not in WORKER_CLASSES:
        raise SystemExit(f"PROXY_HTTP_SERVER: {name!r} is not one of {', '.join(WORKER_CLASSES)}")
    return WORKER_CLASSES[name]
