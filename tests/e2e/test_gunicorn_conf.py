"""Starting lbproxy the documented way: gunicorn -c gunicorn.conf.py from the repo root."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.processes import REPO, Proxy, start_mock, write_config

GUNICORN = str(Path(sys.executable).parent / "gunicorn")


def test_a_bad_proxy_yaml_stops_the_start_with_the_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("proxy:\n  services:\n    - {name: a, domain: a.test, hosts: []}\n")
    started = time.monotonic()
    result = subprocess.run(
        [GUNICORN, "-c", "gunicorn.conf.py"],
        cwd=REPO,
        env={"PROXY_CONFIG": str(bad), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "proxy.services[0].hosts: must not be empty" in result.stderr
    assert "Booting worker" not in result.stderr
    assert time.monotonic() - started < 10


def test_bind_comes_from_listen_and_workers_from_the_environment(tmp_path):
    mock = start_mock("conf")
    config = write_config(
        tmp_path,
        [{"name": "m", "domain": "m.test", "hosts": [{"address": "127.0.0.1", "port": mock.port}]}],
    )
    proxy = Proxy(config, workers=3)
    try:
        answer = requests.get(proxy.url, headers={"Host": "m.test"}, timeout=5)
        assert answer.json()["instance"] == "conf"
        deadline = time.monotonic() + 10
        while len(proxy.children()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(proxy.children()) == 3
    finally:
        proxy.stop()
        mock.stop()


def wait_until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_sighup_applies_a_valid_file_and_refuses_a_bad_one(tmp_path):
    mock = start_mock("reload")
    host = {"address": "127.0.0.1", "port": mock.port}
    config = write_config(tmp_path, [{"name": "one", "domain": "one.test", "hosts": [host]}])
    proxy = Proxy(config, workers=1)
    original = config.read_text()

    def status(domain):
        return requests.get(proxy.url, headers={"Host": domain}, timeout=5).status_code

    try:
        assert (status("one.test"), status("two.test")) == (200, 404)

        config.write_text(original.replace("services:", "services: [oops\n"))
        proxy.signal(signal.SIGHUP)
        assert wait_until(lambda: "reload refused" in proxy.output())
        assert "not valid YAML" in proxy.output()
        time.sleep(1)  # the new workers, booted from the kept config, serve
        assert proxy.running()
        assert (status("one.test"), status("two.test")) == (200, 404)

        config.write_text(original.replace("one.test", "two.test"))
        old_workers = set(proxy.children())
        proxy.signal(signal.SIGHUP)
        # Old workers finish gracefully while new ones start: wait for the switch.
        assert wait_until(lambda: not old_workers & set(proxy.children()))
        assert {(status("two.test"), status("one.test")) for _ in range(10)} == {(200, 404)}
    finally:
        proxy.stop()
        mock.stop()
