"""The README's first command, scripts/demo, as a user runs it: in a network
namespace of its own (it binds the fixed ports 8080, 9901 and 9001-9003), until
it says it is up; then a request through it, its access log in run/access.log
rather than on the terminal, and Ctrl-C (SIGINT) stopping everything it started."""

from __future__ import annotations

import json
import signal
import time

import pytest

from devkit.processes import Spawned, launch, temporary_log, wait_until
from tests.netns import Namespace, fetch
from tests.processes import REPO

ACCESS_LOG = REPO / "run" / "access.log"


@pytest.fixture(scope="module")
def demo():
    namespace = Namespace()
    log = temporary_log("demo")
    started = ACCESS_LOG.stat().st_size if ACCESS_LOG.exists() else 0
    process = Spawned("demo", launch([*namespace.prefix(), "scripts/demo"], log, cwd=REPO), log)
    try:
        up = wait_until(lambda: "Ctrl-C stops" in process.output(), process, 120, "the demo")
        assert up, process.output()
        yield namespace, process, started
    finally:
        process.stop()
        namespace.close()


def test_the_demo_balances_3_2_1_and_answers_through_the_proxy(demo):
    namespace, process, _ = demo
    printed = process.output()
    order = [line.split("-> ")[1] for line in printed.splitlines() if "my-service3" in line]
    assert order == ["mock-9001", "mock-9002", "mock-9001", "mock-9003", "mock-9002", "mock-9001"]
    status, body = fetch(
        namespace, "http://127.0.0.1:8080/hello?x=%2f", "my-service.my-company.com"
    )
    assert status == 200 and json.loads(body)["path"] == "/hello"


def test_the_access_log_goes_to_run_not_the_terminal(demo):
    namespace, process, started = demo
    fetch(namespace, "http://127.0.0.1:8080/logged", "my-service2.my-company.com")

    def logged() -> bool:
        return ACCESS_LOG.exists() and b'"/logged' in ACCESS_LOG.read_bytes()[started:]

    assert wait_until(logged, process, 10, "the access log line")
    assert '"/logged' not in process.output()
    assert "tail -f run/access.log" in process.output()


def test_ctrl_c_stops_the_proxy_and_the_mocks(demo):
    process = demo[1]
    members = process.tree()
    assert len(members) >= 5  # nsenter'd bash, 3 mocks, the proxy master (and workers)
    process.signal(signal.SIGINT)
    assert process.wait(30) is not None
    deadline = time.monotonic() + 10
    while any(member.alive() for member in process.seen.values()):
        assert time.monotonic() < deadline, "a process of the demo outlived Ctrl-C"
        time.sleep(0.1)
