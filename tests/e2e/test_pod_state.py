"""One view per pod, end to end: 2 gunicorn workers sharing health, counts and turns,
and session affinity on top of it (cookie insert, consistent hashing).

Which worker serves a connection is read from /proc (``serving_worker``), so
each test knows it exercised both workers rather than hoping it did.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections import Counter

import pytest
import requests
import yaml

from devkit.processes import wait_until
from tests.processes import Proxy, serving_worker, serving_workers, start_mock, write_config

COOKIE = "lbproxy_affinity"


def host(server):
    return {"address": "127.0.0.1", "port": server.port}


@pytest.fixture(scope="module")
def mocks():
    servers = {name: start_mock(name) for name in ("a", "b", "c", "d", "probed", "k1", "k2")}
    servers["sick"] = start_mock("sick", status=503)
    yield servers
    for server in servers.values():
        server.stop()


def services(m):
    four = [host(m[name]) for name in "abcd"]
    return [
        {"name": "rr", "domain": "rr.test", "hosts": four[:3]},
        {
            "name": "eject",
            "domain": "eject.test",
            "hosts": [host(m["sick"]), host(m["a"]), host(m["b"])],
            "retry": {"attempts": 0},
            "outlier": {"consecutive_failures": 1, "count_5xx": True, "base_ejection": 60},
        },
        {
            "name": "probed",
            "domain": "probed.test",
            "hosts": [host(m["probed"])],
            "health_check": {"path": "/probe", "interval": 0.5},
        },
        {"name": "lc", "domain": "lc.test", "hosts": four[:2], "strategy": "least_connections"},
        {"name": "limited", "domain": "limited.test", "hosts": four[:1], "max_in_flight": 2},
        {"name": "sticky", "domain": "sticky.test", "hosts": four, "affinity": {"cookie": {}}},
        {
            "name": "kill",
            "domain": "kill.test",
            "hosts": [host(m["k1"]), host(m["k2"])],
            "affinity": {"cookie": {"ttl": 600}},
            "timeout": {"connect": 0.5},
        },
        {
            "name": "hash",
            "domain": "hash.test",
            "hosts": four,
            "affinity": {"hash": {"header": "X-User"}},
        },
    ]


@pytest.fixture(scope="module")
def config(mocks, tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("pod"), services(mocks))


@pytest.fixture(scope="module")
def proxy(config):
    server = Proxy(config, workers=2)
    yield server
    server.stop()


class Client:
    """One keep-alive connection to the proxy, and the worker that accepted it."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=15)

    def get(self, domain: str, path: str = "/", headers: dict | None = None):
        self.conn.request("GET", path, headers={"Host": domain, **(headers or {})})
        response = self.conn.getresponse()
        body = response.read()
        answer = (
            json.loads(body) if response.getheader("Content-Type") == "application/json" else {}
        )
        return response.status, response, answer

    @property
    def worker(self) -> int:
        return serving_worker(self.proxy, self.conn.sock)

    def close(self):
        self.conn.close()


def one_on_each_worker(proxy) -> tuple[Client, Client]:
    """Two connections the two workers accepted, one each."""
    first = connect(proxy)
    return first, connect(proxy, avoid=first.worker)


def connect(proxy, on: int | None = None, avoid: int | None = None) -> Client:
    """A connection that worker ``on`` accepted (or any other than ``avoid``)."""
    for _ in range(100):
        client = Client(proxy)
        client.get("nowhere.test")  # a 404 from the worker, nothing upstream
        if (on is None or client.worker == on) and (avoid is None or client.worker != avoid):
            return client
        client.close()
    raise AssertionError("100 connections all reached the other worker")


def fresh(proxy, domain, path="/", headers=None):
    """A request on a new connection of its own; (status, response, answer, worker)."""
    client = Client(proxy)
    try:
        status, response, answer = client.get(domain, path, headers)
        return status, response, answer, client.worker
    finally:
        client.close()


def pod_status(proxy, service):
    answer = requests.get(f"http://127.0.0.1:{proxy.admin_port}/status", timeout=5).json()
    return next(s for s in answer["services"] if s["name"] == service), answer


# --- one view per pod --------------------------------------------------------


def test_a_host_ejected_by_one_worker_is_out_for_both(proxy):
    first, second = one_on_each_worker(proxy)
    statuses = [first.get("eject.test")[0] for _ in range(3)]  # round robin: sick is one of 3
    assert statuses.count(503) == 1  # ... which ejected it, in the first worker
    assert [second.get("eject.test")[0] for _ in range(9)] == [200] * 9
    answers = [fresh(proxy, "eject.test") for _ in range(30)]
    assert {status for status, *_ in answers} == {200}
    assert len({worker for *_, worker in answers}) == 2  # both workers served
    service, _ = pod_status(proxy, "eject")
    sick = service["hosts"][0]
    assert not sick["in_rotation"] and sick["ejected_for"] > 50


def test_round_robin_is_even_across_separate_connections(proxy):
    answers = [fresh(proxy, "rr.test") for _ in range(30)]
    order = [answer["instance"] for _, _, answer, _ in answers]
    assert len({worker for *_, worker in answers}) == 2
    assert order == order[:3] * 10 and sorted(order[:3]) == ["a", "b", "c"]


def test_one_probe_per_host_per_interval_for_the_pod(proxy, mocks):
    direct = f"http://127.0.0.1:{mocks['probed'].port}/"
    time.sleep(1.0)  # the first probes, spread over one interval, have started
    before = requests.get(direct, timeout=5).json()["served"]
    time.sleep(4.0)
    probes = requests.get(direct, timeout=5).json()["served"] - before - 1
    assert 6 <= probes <= 10, probes  # 8 at one probe per 0.5 s; 2 workers each probing: 16


def test_when_the_prober_dies_another_worker_takes_the_health_checks_over(proxy, mocks):
    _, pod = pod_status(proxy, "probed")
    prober = pod["prober_pid"]
    assert prober in proxy.children()
    direct = f"http://127.0.0.1:{mocks['probed'].port}/"
    os.kill(prober, signal.SIGKILL)
    assert wait_until(
        lambda: pod_status(proxy, "probed")[1]["prober_pid"] not in (None, prober),
        proxy,
        10,
        "a new prober",
    )
    assert pod_status(proxy, "probed")[1]["prober_pid"] in proxy.children()
    before = requests.get(direct, timeout=5).json()["served"]
    time.sleep(3.0)
    probes = requests.get(direct, timeout=5).json()["served"] - before - 1
    assert 4 <= probes <= 7, probes


def test_least_connections_counts_the_other_workers_requests(proxy):
    first, second = one_on_each_worker(proxy)
    slow = {}
    thread = threading.Thread(
        target=lambda: slow.update(answer=first.get("lc.test", "/?delay=2")[2])
    )
    thread.start()
    try:
        assert wait_until(lambda: pod_status(proxy, "lc")[0]["in_flight"] == 1, proxy, 5, "lc")
        busy = next(h["host"] for h in pod_status(proxy, "lc")[0]["hosts"] if h["in_flight"])
        instances = {second.get("lc.test")[2]["port"] for _ in range(10)}
        instances |= {fresh(proxy, "lc.test")[2]["port"] for _ in range(10)}
        # Every quick request went to the idle host: the other worker's slow one counts.
        assert instances == {
            int(h["host"].split(":")[1]) for h in pod_status(proxy, "lc")[0]["hosts"]
        } - {int(busy.split(":")[1])}
    finally:
        thread.join()
    assert str(slow["answer"]["port"]) == busy.split(":")[1]


def test_max_in_flight_is_the_pods_total_not_a_share_per_worker(proxy):
    first, second = one_on_each_worker(proxy)
    also_first = connect(proxy, on=first.worker)
    results = []
    threads = [
        threading.Thread(target=lambda c=c: results.append(c.get("limited.test", "/?delay=1.5")[0]))
        for c in (first, also_first)
    ]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(
            lambda: pod_status(proxy, "limited")[0]["in_flight"] == 2, proxy, 5, "limited"
        )
        # Both held by one worker (a per-worker share, 1 each, would have refused one);
        # the other worker sees the pod full.
        assert second.get("limited.test")[0] == 503
    finally:
        for thread in threads:
            thread.join()
    assert results == [200, 200]


# --- cookie affinity -----------------------------------------------------------


def bind(proxy, domain="sticky.test"):
    status, response, answer, _ = fresh(proxy, domain)
    assert status == 200
    set_cookie = response.getheader("Set-Cookie")
    assert response.getheader("Cache-Control") == "private"
    return set_cookie.split(";")[0], answer["instance"], set_cookie


def test_a_cookie_pins_fifty_new_connections_to_one_host(proxy):
    cookie, instance, set_cookie = bind(proxy)
    assert set_cookie.endswith("; Path=/; HttpOnly")  # no ttl: a session cookie
    answers = [fresh(proxy, "sticky.test", headers={"Cookie": cookie}) for _ in range(50)]
    assert {answer["instance"] for _, _, answer, _ in answers} == {instance}
    assert len({worker for *_, worker in answers}) == 2
    # A client already bound gets no new cookie.
    assert {response.getheader("Set-Cookie") for _, response, _, _ in answers} == {None}


def test_the_affinity_cookie_is_stripped_upstream_and_the_others_pass(proxy):
    cookie, _, _ = bind(proxy)
    _, response, answer, _ = fresh(
        proxy,
        "sticky.test",
        "/?set_cookie=app=1",
        headers={"Cookie": f"theme=dark; {cookie}; lang=fr"},
    )
    assert answer["headers"]["Cookie"] == "theme=dark; lang=fr"
    assert response.getheader("Set-Cookie") == "app=1"  # the upstream's own, untouched


def test_a_forged_cookie_is_no_cookie(proxy):
    answers = [
        fresh(proxy, "sticky.test", headers={"Cookie": f"{COOKIE}=forged{i}"}) for i in range(8)
    ]
    assert {status for status, *_ in answers} == {200}
    assert all(
        response.getheader("Set-Cookie").startswith(f"{COOKIE}=") for _, response, _, _ in answers
    )
    assert len({answer["instance"] for _, _, answer, _ in answers}) == 4  # balanced
    service, _ = pod_status(proxy, "sticky")
    assert all(h["in_rotation"] for h in service["hosts"])


def test_when_the_bound_host_dies_the_request_is_redispatched_with_a_new_cookie(proxy, mocks):
    cookie, instance, set_cookie = bind(proxy, "kill.test")
    assert "Max-Age=600" in set_cookie
    for pid in mocks[instance].tree():
        os.kill(pid, signal.SIGKILL)
    status, response, answer, _ = fresh(proxy, "kill.test", headers={"Cookie": cookie})
    assert status == 200 and answer["instance"] != instance
    new = response.getheader("Set-Cookie").split(";")[0]
    assert new != cookie
    status, response, again, _ = fresh(proxy, "kill.test", headers={"Cookie": new})
    assert again["instance"] == answer["instance"] and response.getheader("Set-Cookie") is None


def test_two_replicas_map_a_cookie_to_the_same_host_and_a_reload_keeps_it(proxy, config, mocks):
    cookie, instance, _ = bind(proxy)
    document = yaml.safe_load(config.read_text())
    replica_config = write_config(config.parent, document["proxy"]["services"])
    replica = Proxy(replica_config, workers=2)
    try:
        for _ in range(10):
            _, response, answer, _ = fresh(replica, "sticky.test", headers={"Cookie": cookie})
            assert answer["instance"] == instance and response.getheader("Set-Cookie") is None
        # SIGHUP with a new host first in the list: every position shifts, the cookie holds.
        text = replica_config.read_text()
        document = yaml.safe_load(text)
        sticky = next(s for s in document["proxy"]["services"] if s["name"] == "sticky")
        sticky["hosts"].insert(0, host(mocks["probed"]))
        replica_config.write_text(yaml.safe_dump(document, sort_keys=False))
        old = set(replica.children())
        replica.signal(signal.SIGHUP)
        assert wait_until(lambda: not old & set(replica.children()), replica, 15, "reload")
        assert len(pod_status(replica, "sticky")[0]["hosts"]) == 5
        for _ in range(10):
            _, response, answer, _ = fresh(replica, "sticky.test", headers={"Cookie": cookie})
            assert answer["instance"] == instance and response.getheader("Set-Cookie") is None
    finally:
        replica.stop()


# --- consistent hashing -----------------------------------------------------------


def owners(proxy, keys) -> dict[str, str]:
    session = requests.Session()
    found = {}
    for key in keys:
        answer = session.get(proxy.url, headers={"Host": "hash.test", "X-User": key}, timeout=10)
        found[key] = answer.json()["instance"]
    session.close()
    return found


def test_hashing_spreads_keys_and_a_removed_host_moves_only_its_own(proxy, config):
    keys = [f"user-{i}" for i in range(2000)]
    before = owners(proxy, keys)
    counts = Counter(before.values())
    assert sorted(counts) == ["a", "b", "c", "d"]
    assert all(375 <= n <= 625 for n in counts.values()), counts  # 500 ± 25%
    assert owners(proxy, keys[:200]) == {key: before[key] for key in keys[:200]}  # stable

    document = yaml.safe_load(config.read_text())
    hashed = next(s for s in document["proxy"]["services"] if s["name"] == "hash")
    removed = hashed["hosts"].pop(1)  # the second of four: "b"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    old = set(proxy.children())
    proxy.signal(signal.SIGHUP)
    assert wait_until(lambda: not old & set(proxy.children()), proxy, 15, "reload")
    assert len(pod_status(proxy, "hash")[0]["hosts"]) == 3

    after = owners(proxy, keys)
    assert "b" not in after.values() and removed["port"]
    others = [key for key in keys if before[key] != "b"]
    stayed = sum(after[key] == before[key] for key in others)
    assert stayed / len(others) >= 0.95, stayed / len(others)


def burst(proxy, count: int, domain: str = "rr.test") -> Counter:
    """``count`` connections opened at once, then a request on each: how many
    each worker accepted (the connections stay open until all are counted)."""
    clients = [
        http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10) for _ in range(count)
    ]
    try:
        for client in clients:
            client.connect()  # all queued before the workers' next turn
        for client in clients:
            client.request("GET", "/", headers={"Host": domain})
        for client in clients:
            client.getresponse().read()
        return Counter(serving_workers(proxy, [client.sock for client in clients]))
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("count", [100, 400])
def test_a_burst_of_connections_is_shared_fairly_by_the_workers(proxy, count):
    """Fair accepting (app/process/accept.py): within 60/40 however the burst comes."""
    # Both workers listening (a worker not yet booted has no share to leave it).
    assert wait_until(lambda: len(burst(proxy, 8)) == 2, proxy, 10, "both workers")
    for size in (count, count, count, 30, 30):  # a small burst after large ones too
        time.sleep(0.2)  # the last burst's connections closed (each counted out as it ends)
        split = burst(proxy, size)
        assert set(split) == set(proxy.children()), split
        assert max(split.values()) <= 0.6 * size, split
