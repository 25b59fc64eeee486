"""Process settings from the environment, shared by gunicorn.conf.py and the workers.

proxy.yaml says what to route; these say how big the process is.
"""

from __future__ import annotations

import os

DEFAULT_WORKER_CONNECTIONS = 1000

# (variable, default, meaning): what docs/configuration.md lists (app/config_reference.py).
ENVIRONMENT = (
    ("PROXY_CONFIG", "`proxy.yaml` in the repository", "path of the config file"),
    ("PROXY_WORKERS", "one per CPU", "worker processes"),
    (
        "PROXY_WORKER_CONNECTIONS",
        str(DEFAULT_WORKER_CONNECTIONS),
        "requests one worker holds at once; also the depth of each upstream's connection pool",
    ),
    ("PROXY_ACCESS_LOG", "`-` (stdout)", "`-`, a file path, or `off`"),
    (
        "PROXY_HTTP_SERVER",
        "`lbproxy`",
        "`lbproxy` (its own HTTP/1.1 server) or `gunicorn` (gunicorn's, the reference)",
    ),
    ("STATSD_HOST / _PORT / _PREFIX", "unset", "override `proxy.statsd`"),
    (
        "PROXY_REPLICAS",
        "unset",
        "replicas sharing global rate limits: while Redis is out each limits at"
        " rate / replicas (unset: no limit then)",
    ),
    (
        "PROXY_AFFINITY_KEY",
        "a built-in key",
        "keys affinity cookie values (docs/affinity.md); the same on every replica",
    ),
)


def replicas() -> int | None:
    """PROXY_REPLICAS: how many replicas share global rate limits (docs/ratelimit.md)."""
    text = os.environ.get("PROXY_REPLICAS") or ""
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise SystemExit(f"PROXY_REPLICAS: expected a whole number of replicas, got {text!r}")
    return int(text)


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
    "lbproxy": "app.process.worker.LbproxyServerWorker",  # app/http/server.py
    "gunicorn": "app.process.worker.GunicornServerWorker",  # gunicorn's parser and writer
}


def worker_class() -> str:
    """PROXY_HTTP_SERVER: "lbproxy" (the default) or "gunicorn"."""
    name = os.environ.get("PROXY_HTTP_SERVER") or "lbproxy"
    if name not in WORKER_CLASSES:
        raise SystemExit(f"PROXY_HTTP_SERVER: {name!r} is not one of {', '.join(WORKER_CLASSES)}")
    return WORKER_CLASSES[name]
