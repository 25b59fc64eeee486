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
