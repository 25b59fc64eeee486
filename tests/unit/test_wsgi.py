"""The WSGI entry's refusals: a short plain-text answer, never a traceback."""

from __future__ import annotations

import time

import pytest

from app.config import parse_config
from app.errors import UpstreamConnectError
from app.wsgi import Proxy, private
from tests.wsgi_env import environ

CONFIG = parse_config(
    """
proxy:
  admin: {port: 9911}
  services:
    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}
"""
)


def call(**extra):
    captured = {}
    body = Proxy(CONFIG)(environ(**extra), lambda s, h: captured.update(status=s, headers=h))
    return captured["status"], dict(captured["headers"]), b"".join(body)


def test_unknown_host_is_404():
    status, headers, body = call(HTTP_HOST="b.test")
    assert status == "404 Not Found"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Length"] == str(len(body))


def test_bad_host_and_connect_are_4xx():
    assert call(HTTP_HOST="a.test:x")[0] == "400 Bad Request"
    assert call(REQUEST_METHOD="CONNECT", RAW_URI="a.test:443", HTTP_HOST="a.test")[0].startswith(
        "405"
    )


def test_admin_port_requests_go_to_the_admin():
    status, _, body = call(SERVER_PORT="9911", PATH_INFO="/healthz")
    assert (status, body) == ("200 OK", b"ok\n")


def test_a_total_timeout_spent_between_attempts_leaves_no_host_in_flight():
    config = parse_config(
        """
proxy:
  admin: {port: 9911}
  services:
    - name: a
      domain: a.test
      timeout: {total: 0.05}
      hosts: [{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 2}]
"""
    )
    proxy = Proxy(config)

    class SlowRefusal:
        def send(self, host, request, timeout, deadline=None, tls=None):
            time.sleep(0.1)  # the whole total timeout goes by in this attempt
            raise UpstreamConnectError(host.name)

    proxy.forwarder = SlowRefusal()
    statuses = []
    proxy(environ(HTTP_HOST="a.test"), lambda status, headers: statuses.append(status))
    assert statuses == ["504 Gateway Timeout"]
    assert proxy.router.route("a.test").balancer.total_in_flight == 0


def test_every_path_ends_once_with_its_record_and_stale_retries_count_as_retries():
    """The one end-of-request hook (app/observe/end.py): a refusal ends on close()."""
    proxy = Proxy(CONFIG)
    ended = []
    proxy.end.access_log = lambda batch: ended.extend(record for record, _ in batch)

    class StaleThenRefused:
        def send(self, host, request, timeout, deadline=None, tls=None):
            request.stale_retries += 1  # a pooled connection turned out closed
            raise UpstreamConnectError(host.name)

    proxy.forwarder = StaleThenRefused()
    statuses = []
    body = proxy(environ(HTTP_HOST="a.test"), lambda status, headers: statuses.append(status))
    data = b"".join(body)
    assert statuses == ["502 Bad Gateway"] and ended == []  # not over until closed
    body.close()
    body.close()
    [record] = ended
    assert (record.outcome, record.status, record.retries) == ("connect_error", 502, 1)
    assert record.bytes_out == len(data) and record.finished is not None
    proxy.refused_by_server({}, 400, 20)
    assert [r.status for r in ended] == [502, 400]


@pytest.mark.parametrize(
    ("upstream", "sent"),
    [
        ([], "private"),
        ([("Cache-Control", "public, max-age=60, s-maxage=600")], "private, max-age=60"),
        (
            [("cache-control", "no-cache"), ("Cache-Control", "max-age=5")],
            "private, no-cache, max-age=5",
        ),
        ([("Cache-Control", "private, max-age=60")], "private, max-age=60"),
        ([("Cache-Control", "no-store")], "no-store"),
    ],
)
def test_a_response_that_sets_the_affinity_cookie_is_private_to_caches(upstream, sent):
    headers = private([("Content-Type", "text/plain"), *upstream])
    assert headers[0] == ("Content-Type", "text/plain")
    assert [value for name, value in headers if name.lower() == "cache-control"] == [sent]
