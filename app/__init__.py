"""lbproxy: a Host-routing HTTP load balancer on gunicorn + gevent."""

__version__ = "0.1.0"
