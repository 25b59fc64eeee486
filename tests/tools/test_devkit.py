"""devkit, the tooling's process library: waiting fails fast, stopping leaves nothing.

The registry (stop all, survivors) is exercised by test_bench.py; the mocks and
the proxy by every end-to-end test.
"""

from __future__ import annotations

import os
import time

import pytest

from app.config import parse_config
from devkit import processes
from devkit.lbproxy import config_ports, write_config


def test_waiting_for_a_port_fails_at_once_with_the_log_of_a_dead_process(tmp_path):
    dead = processes.spawn("dies", ["sh", "-c", "echo why it died; exit 3"], tmp_path / "d.log")
    started = time.monotonic()
    with pytest.raises(processes.StartError) as error:
        processes.wait_for_port(processes.free_port(), dead, timeout=30)
    assert time.monotonic() - started < 5
    assert error.value.reason.startswith("dies exited with 3 before port")
    assert str(error.value).endswith("why it died")


def live_children() -> set[int]:
    return {pid for pid in processes.children(os.getpid()) if processes.is_alive(pid)}


def test_a_server_that_does_not_come_up_is_stopped():
    before = live_children()
    with pytest.raises(processes.StartError) as error:
        processes.Server("quiet", ["sleep", "60"], processes.free_port(), timeout=0.3)
    assert "did not open within 0.3 s" in str(error.value)
    assert live_children() <= before


def test_stop_ends_the_descendants_the_root_leaves_behind(tmp_path):
    # sh dies of SIGTERM at once; its child would live on without a stop by PID.
    root = processes.spawn("root", ["sh", "-c", "sleep 60 & wait"], tmp_path / "r.log")
    deadline = time.monotonic() + 5
    while len(root.tree()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = root.children()
    member = root.seen[child]
    assert processes.is_alive(child, member.started)
    assert not processes.is_alive(child, member.started + 1)  # another process on that PID
    root.stop(timeout=5)
    assert root.survivors() == [] and not member.alive()


def test_proc_readings_of_this_process():
    assert processes.cpu_ticks_each([os.getpid()])[os.getpid()] >= 0
    rss, pss = processes.memory_kib([os.getpid()])
    assert rss > 0 and 0 < pss <= rss
    busy, total = processes.machine_ticks()
    assert 0 < processes.system_busy_ticks() <= busy < total


def test_write_config_is_a_proxy_yaml_on_free_ports(tmp_path):
    host = {"address": "127.0.0.1", "port": processes.free_port()}
    path = write_config(tmp_path, [{"name": "s", "domain": "s.test", "hosts": [host]}])
    config = parse_config(path.read_text())
    assert (config.listen.port, config.admin.port) == config_ports(path)
    assert config.services[0].hosts[0].port == host["port"]
