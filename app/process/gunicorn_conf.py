"""gunicorn settings for lbproxy, as a gunicorn config file.

``lbproxy run`` (app/cli.py) passes this file's path to gunicorn's ``-c``;
``gunicorn -c gunicorn.conf.py`` from the repo root runs it through that file.
gunicorn runs it in the master at start and again on SIGHUP (a file given to
``-c`` is executed afresh each time, unlike a ``python:`` module). It
validates proxy.yaml first (see app/process/master.py): an invalid file stops the start
with the reason, and on reload keeps the running config.

Environment (app/process/settings.py):
  PROXY_CONFIG              path of proxy.yaml (default: the repo root's in a
                            checkout, else ./proxy.yaml)
  PROXY_WORKERS             worker processes (default: one per CPU)
  PROXY_WORKER_CONNECTIONS  requests one worker holds at once (default 1000); also
                            the depth of each upstream's connection pool
  PROXY_ACCESS_LOG          "-" (stdout, the default), a file path, or "off"
  PROXY_HTTP_SERVER         "lbproxy" (its own HTTP/1.1 server, the default) or "gunicorn"
  STATSD_HOST/PORT/PREFIX   metrics target, over proxy.statsd (app/observe/metrics.py)
"""

from app.process import master, settings
from app.process.master import load_or_keep

_config = load_or_keep()
settings.replicas()  # a bad PROXY_REPLICAS stops the start here, not in every worker

wsgi_app = "app.wsgi:application"
# Every proxy.yaml listener (TLS where it has `tls`: app/http/tls.py), then the
# admin listener (health and status, app/observe/admin.py), always plain HTTP.
bind = [f"{listen.address}:{listen.port}" for listen in _config.listeners] + [
    f"{_config.admin.address}:{_config.admin.port}"
]
# A gevent worker accepting in batches under load, serving HTTP with lbproxy's
# own server, or with gunicorn's when PROXY_HTTP_SERVER=gunicorn (app/process/worker.py).
worker_class = settings.worker_class()
workers = settings.workers()
# Below the concurrency a worker must hold, gunicorn starves connections silently.
worker_connections = settings.worker_connections()
# gunicorn's gevent worker bounds both the idle time between requests and the
# time to read a request's headers with this: a slow client holds its own
# connection for at most this long, never a worker.
keepalive = _config.limits.client_timeout
# Header limits: gunicorn answers 431 (count, size) or 414 (request line) beyond them.
limit_request_fields = _config.limits.max_header_count
limit_request_field_size = _config.limits.max_header_size
limit_request_line = _config.limits.max_request_line
# SIGTERM: stop accepting, let in-flight requests finish for this long.
graceful_timeout = 30
# gunicorn titles its processes "gunicorn: master [lbproxy]" (with setproctitle
# installed); the hooks below retitle them "lbproxy: master" and "lbproxy: worker".
proc_name = "lbproxy"
# One JSON line per request (app/observe/accesslog.py) on stdout, or to PROXY_ACCESS_LOG
# (a path, or "off"); --access-logfile and --log-config still apply.
logger_class = "app.observe.accesslog.JsonAccessLogger"
accesslog = settings.access_log()
control_socket_disable = True  # one proxy per host path would collide; not used


# The pod's shared area (app/traffic/shared.py), mapped before the first fork,
# and a column of in-flight counts per worker.
def on_starting(server):
    master.start_area(server.cfg.workers)
    master.start_prometheus()
    master.import_for_workers()


def on_exit(server):
    master.stop_prometheus()


def pre_fork(server, worker):
    # gunicorn titles the master its way right before it forks the workers, at
    # start and on every reload: this comes after that.
    master.set_title("master")
    master.assign_column(worker)
    master.freeze_for_fork()


def post_fork(server, worker):
    master.set_title("worker")


def child_exit(server, worker):
    master.free_column(worker)


def post_worker_init(worker):
    """Start each worker's access log, health checks, metrics gauges and log flushes."""
    import gevent

    worker.wsgi.start_background(
        gevent.spawn,
        getattr(worker.log, "log_records", None),
        getattr(worker.log, "flush_access_log", None),
    )


def worker_exit(server, worker):
    """Count and log the requests the worker still holds, send the metrics and
    write the access-log lines."""
    end = getattr(worker.wsgi, "end", None)
    if end is not None:
        end.drain()
    metrics = getattr(worker.wsgi, "metrics", None)
    if metrics is not None:
        metrics.flush(prometheus=True)
    if hasattr(worker.log, "flush_access_log"):
        worker.log.flush_access_log()
