"""The benchmark harness (bench/, docs/bench.md): its smoke run and its parts.

The smoke run is the CI check that the benchmark keeps working: every expected
configuration produced requests and every field, and every process it started
is gone. No timing threshold is asserted: the figures depend on the machine.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from app.config import parse_config
from bench import harness, hostspeed, load, peers, report, tls, wsload
from bench.__main__ import parse_args
from bench.peers import PEERS
from devkit import processes
from devkit.lbproxy import IMAGE_PYCACHE, compile_image_bytecode, image_python_env

REPO = Path(__file__).resolve().parents[2]
SMOKE_CONNECTIONS = (1, 100)
ROW_FIELDS = {
    "section", "peer", "label", "connections", "path", "body_bytes", "requests", "rps",
    "mb_per_s", "latency_us", "errors", "errors_total", "cpu_us_per_req",
    "upstream_cpu_us_per_req", "rss_kib", "pss_kib", "rss_kib_peak", "processes",
    "foreign_cpu_pct", "ratio_haproxy", "tls_case", "tool", "load_command", "repeat", "workers",
    "host_ms", "host_slow_pct",
}  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = REPO / "bench" / "RESULTS.md"
    before = results.stat().st_mtime if results.exists() else None
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    after = results.stat().st_mtime if results.exists() else None
    assert before == after, "the smoke run must not rewrite bench/RESULTS.md"
    data = json.loads((out / "latest.json").read_text())
    return {"data": data, "out": out, "stdout": done.stdout, "elapsed": elapsed}


@pytest.mark.slow
def test_smoke_has_every_configuration_with_requests_and_fields(smoke):
    data = smoke["data"]
    assert data["mode"] == "smoke"
    assert not data.get("error") and not data.get("interrupted")
    assert [s for s in data["sessions"] if s.get("error")] == []
    rows = {(row["peer"], row["connections"]): row for row in data["results"]}
    assert set(rows) == {(p, c) for p in harness.SMOKE_PEERS for c in SMOKE_CONNECTIONS}
    for key, row in rows.items():
        assert set(row) >= ROW_FIELDS, key
        assert row["requests"] > 0 and row["rps"] > 0, key
        assert set(row["latency_us"]) >= {"p50", "p99", "max"}, key
        assert 0 < row["latency_us"]["p50"] <= row["latency_us"]["p99"], key
        assert set(row["errors"]) == {"connect", "read", "write", "status", "timeout"}, key
        assert row["cpu_us_per_req"] > 0, key
        assert row["rss_kib"] > 0 and 0 < row["pss_kib"] <= row["rss_kib"], key
        assert row["ratio_haproxy"] > 0, key
    assert rows[("haproxy", 100)]["ratio_haproxy"] == 1
    assert rows[("lbproxy-2w", 100)]["processes"] == 3  # master + 2 workers
    # The split between lbproxy's 2 workers (and nginx's): CPU, client connections, requests.
    for peer in ("lbproxy-2w", "nginx"):
        split = rows[(peer, 100)]["workers"]
        assert len(split["pids"]) == 2 and sum(split["connections"]) == 100, peer
        assert sum(split["requests"]) == pytest.approx(rows[(peer, 100)]["requests"], rel=0.5)
        assert split["requests_split"].count("/") == 1 and split["cpu_split"] != "–"
    assert rows[("haproxy", 100)]["workers"] is None  # one process: nothing to split
    assert rows[("direct", 100)]["workers"] is None
    assert all(row["repeat"] is None for row in rows.values())  # the smoke runs each once
    assert data["upstream"]["check"]["problems"] == []
    for session in data["sessions"]:
        if session["peer"] != "direct":
            assert session["check"]["problems"] == [], session["peer"]
    assert data["summary"]["lbproxy-2w"]["added_p50_ms"] is not None
    assert {t["target"] for t in data["targets"]} >= {text for text, _ in report.TARGETS.values()}
    for key in ("nproc", "cpu_model", "kernel"):
        assert data["machine"][key]


@pytest.mark.slow
def test_smoke_lbproxy_variants_are_labelled(smoke):
    sessions = {s["peer"]: s for s in smoke["data"]["sessions"]}
    on, off = sessions["lbproxy-2w"], sessions["lbproxy-2w-off"]
    assert set(on["notes"]["variant_env"]) >= {"STATSD_HOST", "STATSD_PORT", "GUNICORN_CMD_ARGS"}
    assert off["notes"]["variant_env"] == {"PROXY_ACCESS_LOG": "off"}  # truly off
    assert off["off_seen"] == {"access_log_lines": 0}
    seen = on["features"]
    assert seen["access_log_lines"] > 0  # gunicorn's --access-logfile works in any build
    assert isinstance(seen["statsd_datagrams"], int)
    text = (smoke["out"] / "latest.md").read_text()
    if not seen["realised"]:
        assert "lbproxy 2 workers, on †" in text  # not faked: marked as not realised
    for session in sessions.values():
        assert session["label"] in text


def test_smoke_samples_the_hosts_speed_through_every_measured_run(smoke):
    data = smoke["data"]
    reference = data["host_reference_ms"]
    # The calibration's 5 s and 2 s measured per run, a sample every INTERVAL_S.
    assert data["host_sample_count"] >= 30 + 5 * len(data["results"])
    for row in data["results"]:
        assert len(row["host_ms"]) >= 5, row["peer"]
        assert min(row["host_ms"]) > 0
        share = hostspeed.slow_share(row["host_ms"], reference)
        assert row["host_slow_pct"] == round(100 * share, 1)
        assert row["attempts_host_slow_pct"][-1] is not None
    text = (smoke["out"] / "latest.md").read_text()
    assert "- host speed: a fixed loop timed in CPU time" in text


# Every module a worker imports, and whether its bytecode is there (run under
# image_python_env(): __cached__ is then the level-2 file in the prefix).
UNCOMPILED = """\
import os, sys
import app.process.gevent_worker, app.wsgi
print([name for name, module in list(sys.modules.items())
       if getattr(module, "__cached__", None) and not os.path.exists(module.__cached__)])
print(sys.flags.optimize, len(sys.modules))
"""


def test_smoke_runs_lbproxy_from_level_2_bytecode(smoke):
    """As its image does: each module lbproxy imports is there, compiled for -OO."""
    assert smoke["data"]["lbproxy_bytecode"]["complete"] is True
    text = (smoke["out"] / "latest.md").read_text()
    assert "- lbproxy: python -OO from bytecode compiled before the run (complete)" in text
    env = {**os.environ, **image_python_env(), "PYTHONDONTWRITEBYTECODE": "1"}
    python = str(REPO / ".venv" / "bin" / "python")
    done = subprocess.run([python, "-c", UNCOMPILED], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    missing, flags = done.stdout.splitlines()
    assert missing == "[]"
    optimize, modules = map(int, flags.split())
    assert optimize == 2 and modules > 300


def test_the_report_says_why_bytecode_is_incomplete(tmp_path):
    failed = compile_image_bytecode(tmp_path / "no-python")
    assert "no-python" in failed
    (line,) = report.bytecode_line({"complete": False, "failed": f"Listing...\n{failed}"})
    assert "**incomplete**" in line and line.endswith(f"last error: {failed})")
    assert report.bytecode_line(None) == []  # a run without lbproxy


def _host_row(peer: str, samples: list[float], connections: int = 100, **more) -> dict:
    return {"section": "main", "peer": peer, "connections": connections, "path": "/1k",
            "foreign_cpu_pct": 0.0, "host_ms": samples, **more}  # fmt: skip


def test_the_report_tells_a_steady_host_from_one_that_slowed():
    steady = [1.0] * 9 + [1.2]  # 1 of 10 samples slow: 10%, not more
    slowed = [1.0] * 8 + [1.2, 1.7]  # 2 of 10: 20%
    data = {"host_reference_ms": 1.0, "results": [_host_row("direct", steady)]}
    report.host_slowness(data)
    assert data["results"][0]["host_slow_pct"] == 10.0
    (line,) = report.host_line(data)
    assert "1.00 ms at the run's 5th percentile" in line and "10% of the 10 samples" in line
    assert "→ steady" in line
    data["results"].append(_host_row("lbproxy-2w", slowed, repeat=2))
    report.host_slowness(data)
    (line,) = report.host_line(data)
    assert "**the host slowed 1 of 2 measured runs**" in line and "lbproxy-2w c=100 #2" in line
    assert report.host_line({"results": data["results"]}) == []  # a run from before it


def test_the_headline_gives_both_retry_limits():
    row = _host_row("lbproxy-2w", [1.0] * 10, attempts_foreign_cpu_pct=[12.0, 1.0])
    data = {
        "machine": {"nproc": 2, "cpu_model": "x", "memory_gib": 24, "kernel": "6", "os": "d",
                    "loadavg_before": [0.1]},
        "versions": {}, "started": "t", "elapsed_s": 1, "mode": "full", "results": [row],
        "options": {"busy_retries": 3, "warmup_s": 1, "duration_s": 4, "wrk": "-t2"},
    }  # fmt: skip
    text = "\n".join(report.headline(data))
    assert "1 case(s) were measured again" in text
    assert f"(up to 3 times, the runs the issue 22 targets compare {3 + 5})" in text
    assert harness.COMPARED_EXTRA_RETRIES == report.COMPARED_EXTRA_RETRIES == 5
    assert harness.ASYNCIO_PEERS is report.ASYNCIO_PEERS


def test_the_report_judges_every_attempt_against_the_final_reference():
    kept = [1.0] * 10
    row = _host_row("lbproxy-2w", kept, attempts_host_ms=[[1.1] * 10, kept],
                    attempts_host_slow_pct=[0.0, 0.0])  # the harness's, against 1.0  # fmt: skip
    data = {"host_reference_ms": 0.9, "results": [row]}  # later samples were faster
    report.host_slowness(data)
    assert row["attempts_host_slow_pct"] == [100.0, 0.0] and row["host_slow_pct"] == 0.0
    bodies = _host_row("haproxy", kept, section="bodies", path="/1m", repeat=2)
    assert report._run_name(bodies) == "haproxy bodies /1m c=100 #2"


def test_the_quiet_target_names_each_disturbed_run():
    rows = [_host_row("lbproxy-2w", [1.0] * 10), _host_row("uvicorn", [1.0] * 10),
            _host_row("haproxy", [2.0] * 10)]  # fmt: skip
    data = {"host_reference_ms": 1.0, "results": rows}
    report.host_slowness(data)
    quiet = report.quiet_target(data)
    assert (quiet["figure"], quiet["met"]) == ("2 of 2 runs", True)  # HAProxy is not compared
    rows[1]["foreign_cpu_pct"] = 12.0  # others busy
    rows[0]["host_ms"] = [1.0] * 8 + [1.3] * 2  # 20% slow
    report.host_slowness(data)
    quiet = report.quiet_target(data)
    assert quiet["met"] is False
    assert quiet["figure"] == "0 of 2 runs (disturbed: lbproxy-2w c=100, uvicorn c=100)"
    assert report.quiet_target({"results": rows})["met"] is None  # no host samples


def test_the_host_monitor_samples_until_stopped():
    monitor = hostspeed.Monitor(interval=0.01).start()
    time.sleep(0.2)
    samples = monitor.stop()
    assert len(samples) >= 3 and all(0 < sample < 1_000 for sample in samples)
    count = len(samples)
    time.sleep(0.05)
    assert len(monitor.samples) == count  # stopped: no sample after stop()


def test_slow_share_and_slowed_against_the_runs_reference():
    assert hostspeed.reference([]) == 0.0
    samples = [5.0] + [1.0] * 5 + [2.0] * 14  # one odd fast sample is not the reference
    assert hostspeed.reference(samples) == 1.0
    assert hostspeed.reference([1.0] * 19 + [0.5]) == 1.0
    assert hostspeed.slow_share([], 1.0) is None
    assert hostspeed.slow_share([1.0, 1.15, 1.16, 2.0], 1.0) == 0.5  # over 15%: slow
    assert not hostspeed.slowed(None) and not hostspeed.slowed(10.0) and hostspeed.slowed(10.1)


def test_waiting_for_a_fast_host_ends_at_its_limit_or_when_fast(monkeypatch):
    took = hostspeed.wait_until_fast(1e-9, limit=0.1, interval=0.01)  # never fast
    assert 0.1 <= took < 1.0
    script = iter([2.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 9.0])
    monkeypatch.setattr(hostspeed, "loop_ms", lambda: next(script))
    assert hostspeed.wait_until_fast(1.0, limit=30, interval=0.001) < 1.0
    assert next(script) == 9.0  # a slow sample restarted the count: 7 samples, not 3


class ScriptedRunner(harness.Runner):
    """A Runner whose measured runs come from a script of (foreign %, host slow %).

    ``measure`` stands in for the load and /proc, keeping the harness's own
    steps around them: the wait for a fast host, then the judgement of the host.
    """

    def __init__(self, options, script):
        super().__init__(options)
        shutil.rmtree(self.tmp)
        self.script = list(script)
        self.host_samples = [1.0] * 100  # calibrated at 1.0 ms
        self.asked_to_wait = []

    def measure(self, peer, process, port, case, sink, wait_for_host=False):
        self.asked_to_wait.append(wait_for_host)
        if wait_for_host:
            self.wait_for_fast_host()
        foreign, slow = self.script.pop(0)
        row = {"section": case.section, "peer": peer.name, "foreign_cpu_pct": foreign,
               "host_ms": [1.0] * round(100 - slow) + [2.0] * round(slow)}  # fmt: skip
        self.judge_host(row)
        return row


@pytest.fixture
def no_waiting(monkeypatch):
    """The waits a retry makes, recorded instead of waited."""
    waits = {"host": [], "quiet": []}
    monkeypatch.setattr(hostspeed, "wait_until_fast", lambda ref, limit: waits["host"].append(ref))
    monkeypatch.setattr(harness, "wait_for_quiet", lambda limit: waits["quiet"].append(limit))
    return waits


def test_a_compared_run_is_measured_again_while_the_host_slows_it(no_waiting):
    options = harness.Options(busy_retries=3, budget=600)
    main = harness.Case("main", 100)
    slow = [(0.0, 50.0)] * 20
    runner = ScriptedRunner(options, slow)
    row = runner.measure_quietly(PEERS["lbproxy-2w"], None, 0, main, None)
    assert row["attempts_host_slow_pct"] == [50.0] * (1 + 3 + harness.COMPARED_EXTRA_RETRIES)
    assert no_waiting["host"] == [1.0] * 9 and runner.asked_to_wait == [True] * 9
    assert len(row["attempts_host_ms"]) == 9 and row["attempts_host_ms"][-1] == row["host_ms"]
    # The first undisturbed attempt ends it and is kept; a busy one waits for quiet.
    runner = ScriptedRunner(options, [(0.0, 40.0), (12.0, 0.0), (0.0, 5.0), (0.0, 0.0)])
    row = runner.measure_quietly(PEERS["uvicorn"], None, 0, main, None)
    assert row["attempts_foreign_cpu_pct"] == [0.0, 12.0, 0.0]
    assert row["host_slow_pct"] == 5.0 and row["foreign_cpu_pct"] == 0.0
    assert len(no_waiting["quiet"]) == 1


def test_other_runs_are_measured_again_only_when_others_were_busy(no_waiting):
    options = harness.Options(busy_retries=3, budget=600)
    runner = ScriptedRunner(options, [(0.0, 50.0)] * 5)
    row = runner.measure_quietly(PEERS["haproxy"], None, 0, harness.Case("main", 100), None)
    assert row["attempts_host_slow_pct"] == [50.0]  # recorded, not retried for
    assert runner.asked_to_wait == [False]
    runner = ScriptedRunner(options, [(20.0, 50.0), (15.0, 0.0), (5.0, 90.0)])
    row = runner.measure_quietly(PEERS["lbproxy-2w"], None, 0, harness.Case("bodies", 100), None)
    assert row["attempts_foreign_cpu_pct"] == [20.0, 15.0, 5.0] and row["host_slow_pct"] == 90.0


def test_no_retry_without_retries_or_budget(no_waiting):
    main = harness.Case("main", 100)
    runner = ScriptedRunner(harness.Options(), [(50.0, 50.0)] * 5)  # a smoke or partial run
    row = runner.measure_quietly(PEERS["lbproxy-2w"], None, 0, main, None)
    assert row["attempts_host_slow_pct"] == [50.0] and runner.asked_to_wait == [False]
    runner = ScriptedRunner(harness.Options(busy_retries=3, budget=0), [(50.0, 50.0)] * 5)
    row = runner.measure_quietly(PEERS["lbproxy-2w"], None, 0, main, None)
    assert row["attempts_foreign_cpu_pct"] == [50.0] and no_waiting == {"host": [], "quiet": []}


def test_the_least_disturbed_attempt_is_kept():
    quiet = {"foreign_cpu_pct": 1.0, "host_slow_pct": 5.0}
    slowed = {"foreign_cpu_pct": 0.0, "host_slow_pct": 30.0}  # 3 times its limit
    busy = {"foreign_cpu_pct": 60.0, "host_slow_pct": 0.0}  # 6 times its limit
    assert not report.disturbed(quiet) and report.disturbed(slowed) and report.disturbed(busy)
    assert not report.disturbed(slowed, host=False)
    assert min([slowed, busy, quiet], key=harness.disturbance) is quiet
    assert min([slowed, busy], key=harness.disturbance) is slowed
    assert harness.disturbance(slowed, host=False) == 0.0  # a run not compared: others only


@pytest.mark.slow
def test_smoke_leaves_no_process_running(smoke):
    data = smoke["data"]
    assert data["survivors"] == []
    names = {p["name"] for p in data["processes"]}
    assert names >= {"upstream", "haproxy", "nginx", "lbproxy-2w", "lbproxy-2w-off", "statsd-sink"}
    assert sum(p["name"] == "lbproxy-2w" for p in data["processes"]) == 3
    for process in data["processes"]:
        assert not processes.is_alive(process["pid"], process["started"]), process


def test_wrk_report_is_parsed():
    output = (
        "Running 2s test @ http://127.0.0.1:1/1k\n"
        'BENCH-JSON {"requests":2000,"duration_us":2000000,"bytes":3000000,'
        '"errors":{"connect":0,"read":1,"write":0,"status":2,"timeout":3},'
        '"latency_us":{"mean":1.0,"stdev":1.0,"min":1,"max":9,"p50":4,"p90":5,"p99":7,"p999":8}}\n'
    )
    result = load.parse(output)
    assert result["rps"] == 1000 and result["mb_per_s"] == 1.5
    assert result["errors"]["timeout"] == 3
    with pytest.raises(ValueError):
        load.parse("wrk: connection refused\n")


def test_wrk_uses_one_thread_for_one_connection():
    assert "-t1" in load.Load(8080, "/1k", 1, 2).args()
    args = load.Load(8080, "/1m", 400, 5).args()
    assert "-t2" in args and "-c400" in args and "-d5s" in args
    assert args[-1] == "http://127.0.0.1:8080/1m" and "Host: bench.test" in args


def test_full_plan_covers_every_peer_and_scaling_case():
    options = harness.Options()
    assert options.full
    sessions = {peer.name: cases for peer, cases in harness.plan(options)}
    assert set(sessions) == set(peers.PEERS)
    limited = {name for name, peer in peers.PEERS.items() if peer.limit or not peer.prometheus}
    for name in set(peers.PEERS) - {"lbproxy-2w-10k", *tls.PEERS, *report.WS_PEERS, *limited}:
        assert {c.connections for c in sessions[name] if c.section == "main"} == {1, 100, 400}
        assert not any(c.tls for c in sessions[name])
    for name in tls.PEERS:
        assert {c.section for c in sessions[name]} == {"tls"}
    sweep = {c.connections for c in sessions["lbproxy-2w"] if c.path == "/1k"}
    assert sweep == {1, 10, 100, 400, 1000}
    bodies = [c.path for c in sessions["lbproxy-2w"] if c.section == "bodies"]
    assert bodies == ["/100k", "/1m"]
    assert [c.section for c in sessions["lbproxy-2w-10k"]] == ["domains"]
    for name in limited:  # one section, 100 connections, against lbproxy-2w's
        section = "ratelimit" if peers.PEERS[name].limit else "prometheus"
        assert [(c.section, c.connections) for c in sessions[name]] == [(section, 100)]
    assert ("ratelimit", 100) in [(c.section, c.connections) for c in sessions["lbproxy-2w"]]
    assert harness.estimate_seconds(options) < 780


def test_lbproxy_configs_are_valid_with_3_and_10000_domains():
    for domains in (3, 10_000):
        document = peers.lbproxy_config(18080, 18081, 18082, domains)
        config = parse_config(yaml.safe_dump(document))
        assert len(config.services) == domains
        assert config.services[0].domain == peers.BENCH_DOMAIN
        assert config.listen.address == config.admin.address == "127.0.0.1"
        assert {h.port for s in config.services for h in s.hosts} == {18082}


def test_features_seen_tells_realised_from_not(tmp_path):
    (tmp_path / "statsd.json").write_text(json.dumps({"datagrams": 0, "sample": []}))
    (tmp_path / "access.log").write_text('127.0.0.1 - - "GET /1k HTTP/1.1" 200 1024\n')
    seen = harness.features_seen(tmp_path, peers.PEERS["lbproxy-2w"])
    assert seen["access_log_lines"] == 1 and not seen["metrics"] and not seen["realised"]
    (tmp_path / "statsd.json").write_text(json.dumps({"datagrams": 7, "sample": ["a:1|c"]}))
    (tmp_path / "access.log").write_text('{"status": 200}\n{"status": 200}\n')
    seen = harness.features_seen(tmp_path, peers.PEERS["lbproxy-2w"])
    assert seen["access_log_lines"] == 2 and seen["realised"]


def test_processes_are_stopped_by_pid_with_their_descendants(tmp_path):
    registry = processes.Registry(timeout=5.0)
    # A root that ignores SIGTERM, with a child of its own: both must go.
    stubborn = registry.start(
        "stubborn", ["sh", "-c", "trap '' TERM; sleep 60 & wait"], tmp_path / "a.log"
    )
    deadline = time.monotonic() + 5
    while len(stubborn.tree()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(stubborn.tree()) == 2
    rss, pss = processes.memory_kib(stubborn.tree())
    assert rss > 0 and pss > 0
    assert processes.cpu_ticks(stubborn.tree()) >= 0
    plain = registry.start("plain", ["sleep", "60"], tmp_path / "b.log", stop_signal=signal.SIGINT)
    started = time.monotonic()
    registry.stop(stubborn, timeout=0.5)
    registry.stop_all()
    assert time.monotonic() - started < 15
    assert registry.survivors() == [] and registry.live == []
    assert {s.name for s in registry.record} == {"stubborn", "plain"}
    assert len(registry.record) == 3
    for seen in registry.record:
        assert not processes.is_alive(seen.pid, seen.started)
    assert plain.popen.returncode == -signal.SIGINT
    assert os.getpid() not in {s.pid for s in registry.record}


def test_report_marks_targets_met_and_not_met():
    def row(peer, conns, rps, p50, cpu=100.0, rss=80 * 1024, errors=0):
        return {
            "section": "main", "peer": peer, "label": peer, "connections": conns,
            "path": "/1k", "rps": rps, "latency_us": {"p50": p50, "p99": p50 * 3},
            "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": errors},
            "errors_total": 0, "cpu_us_per_req": cpu, "upstream_cpu_us_per_req": 10.0,
            "rss_kib": rss, "pss_kib": rss // 2, "processes": 3, "foreign_cpu_pct": 0.0,
            "mb_per_s": 1.0,
        }  # fmt: skip

    data = {
        "results": [
            row("direct", 1, 30000, 50),
            row("haproxy", 100, 50000, 1000),
            row("lbproxy-2w", 1, 2000, 300),
            row("lbproxy-2w", 100, 6000, 9000, cpu=400.0),
            row("lbproxy-2w", 400, 6000, 40000, errors=2),
        ],
        "sessions": [
            {"peer": name, "label": name, "kind": name.split("-")[0]}
            for name in ("direct", "haproxy", "lbproxy-2w")
        ],
    }
    report.derive(data)
    status = {t["target"]: t["met"] for t in data["targets"]}
    texts = {key: text for key, (text, _) in report.TARGETS.items()}
    assert status[texts["ratio_100"]] is True  # 12%
    assert status[texts["cpu_100"]] is False  # 400 µs
    assert status[texts["added_p50"]] is True  # +0.25 ms
    assert status[texts["rss"]] is True
    assert status[texts["errors_400"]] is False
    assert data["summary"]["lbproxy-2w"]["added_p50_ms"] == pytest.approx(0.25)
    assert data["targets_22"] == []  # no asyncio peer in this run


TARGET = "lbproxy-2w"


def test_report_marks_issue_22s_targets_against_the_best_asyncio_peer():
    def row(peer, conns, rps, cpu=70.0, rss=85 * 1024, requests=None):
        return {
            "section": "main", "peer": peer, "label": peer, "connections": conns,
            "path": "/1k", "rps": rps, "latency_us": {"p50": 1000, "p99": 3000},
            "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
            "errors_total": 0, "cpu_us_per_req": cpu, "upstream_cpu_us_per_req": 10.0,
            "rss_kib": rss, "pss_kib": rss // 2, "processes": 3, "foreign_cpu_pct": 0.0,
            "mb_per_s": 1.0, "workers": {"requests": requests} if requests else None,
        }  # fmt: skip

    data = {
        "results": [
            row("aiohttp", 1, 3000), row("aiohttp", 100, 15000), row("aiohttp", 400, 14000),
            row("granian", 100, 12000),
            row("lbproxy-2w", 1, 3500, requests=[10, 0]),
            row("lbproxy-2w", 100, 20000, requests=[55, 45]),
            row("lbproxy-2w", 400, 13000, cpu=80.0, rss=95 * 1024, requests=[65, 35]),
        ],
        "sessions": [{"peer": n, "label": n, "kind": n} for n in ("aiohttp", "granian", TARGET)],
    }  # fmt: skip
    report.derive(data)
    status = {t["target"]: t["met"] for t in data["targets_22"]}
    assert status["≥ 1.3× the best asyncio peer's req/s at 100 connections"] is True  # 1.33×
    assert status["≥ 1.0× the best asyncio peer's req/s at 1 connections"] is True
    assert status["≥ 1.0× the best asyncio peer's req/s at 400 connections"] is False
    assert status["≤ 75 µs CPU per request at 100 connections"] is True
    assert status["workers split within 60/40 at 100 and 400 connections, every run"] is False
    # 85 MiB at 100 connections: met, though 400 connections took 95.
    assert status["≤ 90 MiB RSS, master + 2 workers, at 100 connections"] is True
    assert status[report.quiet_target(data)["target"]] is None  # no host samples in these rows
    assert len(report.targets_table(data, "targets_22")) == 2 + 7  # a header, a rule, 7 rows
    # A run without its split, or a peer with no requests, is not a pass nor a crash.
    data["results"][-1]["workers"] = {"requests": [0, 0]}
    data["results"][-2]["rss_kib"] = 91 * 1024
    data["results"][0]["rps"] = 0
    report.derive(data)
    status = {t["target"]: t["met"] for t in data["targets_22"]}
    assert status["workers split within 60/40 at 100 and 400 connections, every run"] is None
    assert status["≤ 90 MiB RSS, master + 2 workers, at 100 connections"] is False


# --- the tls section ------------------------------------------------------------

H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2

finished in 2.00s, 1410.00 req/s, 1.46MB/s
requests: 2820 total, 2821 started, 2820 done, 2817 succeeded, 3 failed, 1 errored, 0 timeout
status codes: 2817 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 2.92MB (3062298) total, 96.08KB (98385) headers (space savings 85.03%), 2.75MB (2887680) data
                     min         max         mean         sd        +/- sd
time for request:      539us     19.50ms       695us       380us    99.57%
"""  # noqa: E501


def test_h2load_report_is_parsed(tmp_path):
    log = tmp_path / "h2load.tsv"
    log.write_text("".join(f"17966000000{i:05d}\t200\t{100 + i}\n" for i in range(1000)))
    result = load.H2Load(8443, "/1k", 1, 2, log).parse(H2LOAD_OUTPUT)
    assert not log.exists()  # read once, then removed (h2load appends)
    assert result["requests"] == 2820 and result["rps"] == 1410
    assert result["duration_us"] == 2_000_000 and result["bytes"] == 3062298
    assert result["errors"] == {"connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0}
    latency = result["latency_us"]
    assert (latency["min"], latency["p50"], latency["p99"], latency["max"]) == (
        100,
        599,
        1089,
        1099,
    )
    assert (result["alpn"], result["tls_version"]) == ("h2", "TLSv1.3")
    assert result["h2load"]["logged"] == 1000
    with pytest.raises(ValueError):
        load.H2Load(8443, "/1k", 1, 2, log).parse("h2load: could not connect\n")


def test_tls_section_plan_and_loads(tmp_path):
    sessions = harness.plan(harness.Options(sections=("tls",)))
    assert [peer.name for peer, _ in sessions] == list(tls.PEERS)
    for peer, cases in sessions:
        assert peer.tls
        assert [(c.tls, c.connections) for c in cases] == [
            ("h1", 1), ("h1", 100), ("h2", 1), ("h2", 100), ("handshake", 100)
        ]  # fmt: skip
    assert peers.PEERS["lbproxy-2w-tls"].workers == 2 and peers.PEERS["lbproxy-2w-tls"].features
    specs = {(c.tls, c.connections): harness.load_spec(c, 8443, 4, tmp_path / "h2.tsv")
             for c in cases}  # fmt: skip
    h1 = specs[("h1", 100)].args()
    assert h1[0] == "wrk" and h1[-1] == "https://127.0.0.1:8443/1k" and "-c100" in h1
    assert "Host: bench.test" in h1 and "Connection: close" not in h1
    handshake = specs[("handshake", 100)].args()
    assert handshake[0] == "wrk" and "Connection: close" in handshake and "-c100" in handshake
    assert handshake[-1].startswith("https://")
    h2 = specs[("h2", 100)].args()
    assert h2[0] == "h2load" and h2[-1] == "https://127.0.0.1:8443/1k"
    assert {"-c100", "-t2", "-m1", "-D4", ":authority: bench.test"} <= set(h2)
    assert "-t1" in specs[("h2", 1)].args()
    # Its time, and the smoke run stays without it.
    assert harness.estimate_seconds(harness.Options(sections=("tls",))) < 90
    smoke = parse_args(["--smoke"])
    assert not any(peer.tls or any(c.tls for c in cases) for peer, cases in harness.plan(smoke))


def test_tls_configs_terminate_tls_with_the_bench_certificate(tmp_path):
    files = tls.make_files(tmp_path / "certs", peers.BENCH_DOMAIN)
    pem = files.pem.read_text()
    assert "BEGIN CERTIFICATE" in pem and "PRIVATE KEY" in pem
    leaf = subprocess.run(
        ["openssl", "x509", "-in", str(files.cert), "-noout", "-text"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "prime256v1" in leaf and "DNS:bench.test" in leaf and "IP Address:127.0.0.1" in leaf
    extra = {"admin_port": 18081, "statsd_port": 18083, "on_env": {}, "off_env": {}, "tls": files}

    haproxy = peers.launch(peers.PEERS["haproxy-tls"], tmp_path / "h", 18443, 18082, extra)
    cfg = tmp_path / "h" / "haproxy.cfg"
    text = cfg.read_text()
    assert f"bind 127.0.0.1:18443 ssl crt {files.pem} alpn h2,http/1.1\n" in text
    assert "server nginx 127.0.0.1:18082\n" in text and haproxy.notes["config"] == text
    assert "ssl" not in peers.haproxy_config(18080, 18082)  # the plain peer: unchanged
    if Path("/usr/sbin/haproxy").exists():  # HAProxy's own check, certificate loaded
        done = subprocess.run(
            ["/usr/sbin/haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr

    lbproxy = peers.launch(peers.PEERS["lbproxy-2w-tls"], tmp_path / "l", 18444, 18082, extra)
    config = parse_config((tmp_path / "l" / "proxy.yaml").read_text())
    [listener] = config.listeners
    assert (listener.address, listener.port) == ("127.0.0.1", 18444)
    assert listener.tls.alpn == ("h2", "http/1.1")
    [certificate] = listener.tls.certificates
    assert Path(certificate.cert) == files.cert.resolve() and certificate.names == ("bench.test",)
    assert config.services[0].domain == peers.BENCH_DOMAIN
    assert {h.port for s in config.services for h in s.hosts} == {18082}
    # The "on" variant of the main section: 2 workers, metrics and access log.
    assert lbproxy.env["PROXY_WORKERS"] == "2" and lbproxy.env["STATSD_PORT"] == "18083"
    assert "--access-logfile" in lbproxy.env["GUNICORN_CMD_ARGS"]


def _row(peer, conns, rps, cpu, tls_case=None, section="main"):
    return {
        "section": "tls" if tls_case else section, "peer": peer, "label": peer,
        "connections": conns, "path": "/1k", "tls_case": tls_case, "rps": rps,
        "latency_us": {"p50": 1000, "p99": 3000},
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        "errors_total": 0, "cpu_us_per_req": cpu, "upstream_cpu_us_per_req": 10.0,
        "rss_kib": 80 * 1024, "pss_kib": 40 * 1024, "processes": 3, "foreign_cpu_pct": 0.0,
        "mb_per_s": 1.0,
    }  # fmt: skip


def test_report_compares_tls_cases_with_haproxy_over_tls():
    probe = {
        "version": "TLSv1.3",
        "cipher": "X",
        "alpn": "h2",
        "resumed": 20,
        "resume_attempts": 20,
    }
    data = {
        "results": [
            _row("haproxy", 100, 50000, 17.0),
            _row("haproxy-tls", 100, 40000, 25.0, "h1"),
            _row("haproxy-tls", 100, 38000, 26.0, "h2"),
            _row("haproxy-tls", 100, 2000, 400.0, "handshake") | {"handshakes_per_s": 2000},
            _row("lbproxy-2w-tls", 100, 8000, 200.0, "h1"),
            _row("lbproxy-2w-tls", 100, 2000, 600.0, "h2"),
            _row("lbproxy-2w-tls", 100, 1500, 700.0, "handshake") | {"handshakes_per_s": 1500},
        ],
        "sessions": [
            {"peer": "haproxy", "label": "HAProxy", "kind": "haproxy"},
            {"peer": "haproxy-tls", "label": "HAProxy TLS", "kind": "haproxy", "tls": probe},
            {"peer": "lbproxy-2w-tls", "label": "lbproxy TLS", "kind": "lbproxy"},
        ],
    }
    report.derive(data)
    ratios = {(r["peer"], r["tls_case"]): r["ratio_haproxy"] for r in data["results"]}
    assert ratios[("lbproxy-2w-tls", "h1")] == pytest.approx(0.2)  # to HAProxy over TLS
    assert ratios[("lbproxy-2w-tls", "handshake")] == pytest.approx(0.75)
    assert ratios[("haproxy-tls", "h2")] == 1
    assert set(data["summary"]) == {"haproxy"}  # the TLS peers have their own summary
    lbproxy = data["tls_summary"]["lbproxy-2w-tls"]
    assert lbproxy["h2_vs_h1_100"]["h2_extra_cpu_us"] == pytest.approx(400)
    assert lbproxy["h2_vs_h1_100"]["h2_rps_ratio"] == pytest.approx(0.25)
    assert lbproxy["handshake"]["handshakes_per_s"] == 1500
    table = "\n".join(report.tls_table(data))
    assert "handshakes/s" in table.splitlines()[0]
    handshake = "| new TLS connection per request (wrk, Connection: close) | lbproxy TLS | 100 |"
    assert handshake + " 1,500 | 1,500 | 75.0% |" in table
    notes = "\n".join(report.tls_notes(data))
    assert "+400 µs" in notes and "resumed 20 of 20" in notes


# --- the websocket section ------------------------------------------------------


def test_websocket_section_plan_and_load():
    options = harness.Options(sections=("websocket",))
    sessions = harness.plan(options)
    assert [peer.name for peer, _ in sessions] == list(report.WS_PEERS)
    for peer, cases in sessions:
        assert peer.ws and peer.name in report.WS_PEERS
        assert [(c.section, c.connections) for c in cases] == [("websocket", 1), ("websocket", 50)]
    lbproxy = peers.PEERS["ws-lbproxy-2w"]
    assert (lbproxy.workers, lbproxy.features, lbproxy.domains) == (2, True, 1)
    # Its time in a full run, and the smoke run stays without it.
    full = harness.Options()
    without = harness.Options(sections=tuple(s for s in harness.SECTIONS if s != "websocket"))
    assert harness.estimate_seconds(full) - harness.estimate_seconds(without) < 60
    smoke = parse_args(["--smoke"])
    assert not any(peer.ws for peer, _ in harness.plan(smoke))
    assert parse_args(["--sections", "websocket"]).sections == ("websocket",)
    args = harness.load_spec(harness.ws_cases()[1], 18080, 4, Path("/unused")).args()
    assert args[:3] == [sys.executable, "-m", "bench.wsload"]
    assert args[args.index("--connections") + 1] == "50"
    assert args[args.index("--processes") + 1] == "2" and args[args.index("--port") + 1] == "18080"
    assert harness.load_spec(harness.ws_cases()[0], 1, 4, Path("/unused")).processes == 1
    assert wsload.split(50, 2) == [25, 25] and wsload.split(1, 2) == [1]


def test_nginx_websocket_config_passes_nginx_check(tmp_path):
    home = tmp_path / "ws-nginx"
    extra = {"admin_port": 18081, "statsd_port": 18083, "on_env": {}, "off_env": {}}
    launch = peers.launch(peers.PEERS["ws-nginx"], home, 18080, 18090, extra)
    text = (home / "nginx.conf").read_text()
    for line in (
        "proxy_pass http://127.0.0.1:18090;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        'proxy_set_header Connection "upgrade";',
        "proxy_set_header Host $host;",
        "proxy_read_timeout 300s;",
        "worker_processes 2;",
        "listen 127.0.0.1:18080 ",
    ):
        assert line in text, line
    assert launch.notes["config"] == text
    assert launch.args[:2] == ["/usr/sbin/nginx", "-p"]
    if Path("/usr/sbin/nginx").exists():  # nginx's own check, with the run's prefix
        done = subprocess.run(
            [*launch.args, "-t"], capture_output=True, text=True, timeout=30
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    # lbproxy: one service, the echo upstream as its host; the "on" variant.
    lbproxy = peers.launch(peers.PEERS["ws-lbproxy-2w"], tmp_path / "l", 18082, 18090, extra)
    config = parse_config((tmp_path / "l" / "proxy.yaml").read_text())
    [service] = config.services
    assert service.domain == peers.BENCH_DOMAIN and {h.port for h in service.hosts} == {18090}
    assert (
        lbproxy.env["PROXY_WORKERS"] == "2"
        and "--access-logfile" in lbproxy.env["GUNICORN_CMD_ARGS"]
    )
    echo = peers.ws_echo(18090)
    assert echo.args[1:] == ["-m", "tests.ws_upstream", "--port", "18090"] and echo.cwd == REPO


def test_wsload_results_are_merged_and_parsed():
    parts = [
        {"latencies_us": [300, 100, 200], "errors": {"connect": 0, "read": 1, "write": 0,
                                                      "status": 0, "timeout": 0}},
        {"latencies_us": [400], "errors": {"connect": 2, "read": 0, "write": 0, "status": 1,
                                           "timeout": 1}},
    ]  # fmt: skip
    result = wsload.summarise(parts, 2)
    assert result["requests"] == 4 and result["duration_us"] == 2_000_000
    assert result["bytes"] == 4 * wsload.MESSAGE_BYTES and result["processes"] == 2
    assert result["errors"] == {"connect": 2, "read": 1, "write": 0, "status": 1, "timeout": 1}
    latency = result["latency_us"]
    assert (latency["min"], latency["p50"], latency["p99"], latency["max"]) == (100, 200, 400, 400)
    assert latency["mean"] == 250
    parsed = load.parse("noise\n" + wsload.MARKER + json.dumps(result) + "\n", "wsload")
    assert parsed["rps"] == 2 and parsed["mb_per_s"] == pytest.approx(64e-6)
    assert load.WsLoad(1, 50, 2).parse(wsload.MARKER + json.dumps(result)) == parsed
    empty = load.parse(wsload.MARKER + json.dumps(wsload.summarise([], 2)), "wsload")
    assert empty["requests"] == 0 and empty["rps"] == 0 and empty["latency_us"]["p99"] == 0
    with pytest.raises(ValueError):
        load.parse("Traceback (most recent call last):\n", "wsload")


def test_report_compares_websocket_with_nginx_and_direct():
    def row(peer, conns, rps, p50, p99, cpu):
        return _row(peer, conns, rps, cpu, section="websocket") | {
            "path": "/", "latency_us": {"p50": p50, "p99": p99}
        }  # fmt: skip

    data = {
        "results": [
            _row("haproxy", 1, 9000, 20.0),
            row("ws-direct", 1, 4000, 200, 900, 80.0),
            row("ws-lbproxy-2w", 1, 2500, 350, 1500, 110.0),
            row("ws-nginx", 1, 3000, 250, 1000, 35.0),
            row("ws-lbproxy-2w", 50, 6000, 7000, 20000, 90.0),
            row("ws-nginx", 50, 5000, 8000, 30000, 30.0),
        ],
        "sessions": [
            {"peer": name, "label": name, "kind": "x"}
            for name in ("haproxy", "ws-direct", "ws-lbproxy-2w", "ws-nginx")
        ],
    }
    report.derive(data)
    assert set(data["summary"]) == {"haproxy"}  # the ws peers have their own summary
    ws = data["ws_summary"]
    assert ws["ws-lbproxy-2w"]["1"]["ratio_nginx"] == pytest.approx(2500 / 3000)
    assert ws["ws-lbproxy-2w"]["1"]["added_p50_ms"] == pytest.approx(0.15)
    assert ws["ws-lbproxy-2w"]["1"]["added_p99_ms"] == pytest.approx(0.6)
    assert ws["ws-lbproxy-2w"]["50"]["ratio_nginx"] == pytest.approx(1.2)
    assert ws["ws-lbproxy-2w"]["50"]["added_p50_ms"] is None  # no direct row at 50 here
    assert ws["ws-direct"]["1"]["added_p50_ms"] is None
    assert all(r.get("ratio_haproxy") is None for r in data["results"] if r["peer"] != "haproxy")
    table = "\n".join(report.ws_table(data))
    assert "messages/s" in table.splitlines()[0]
    assert "| ws-lbproxy-2w | 1 | 2,500 | 83.3% | 0.350 | 1.50 | +0.150 / +0.600 |" in table


# --- issue 22: the asyncio peers, the correctness check, truly off, splits, repeats ---


def test_lbproxy_off_is_off_and_on_logs_to_a_file(tmp_path, monkeypatch):
    # Whatever the caller's environment says, "off" has no access log and no StatsD.
    monkeypatch.setenv("STATSD_HOST", "127.0.0.9")
    monkeypatch.setenv("PROXY_ACCESS_LOG", "-")
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--access-logfile -")
    extra = {"admin_port": 18081, "statsd_port": 18083, "on_env": {}, "off_env": {}}
    off = peers.launch(peers.PEERS["lbproxy-2w-off"], tmp_path / "off", 18080, 18082, extra)
    assert off.env["PROXY_ACCESS_LOG"] == "off"
    assert not {"STATSD_HOST", "STATSD_PORT", "STATSD_PREFIX", "GUNICORN_CMD_ARGS"} & set(off.env)
    assert "statsd" not in yaml.safe_load((tmp_path / "off" / "proxy.yaml").read_text())["proxy"]
    on = peers.launch(peers.PEERS["lbproxy-2w"], tmp_path / "on", 18080, 18082, extra)
    log = tmp_path / "on" / "access.log"
    assert on.env["GUNICORN_CMD_ARGS"] == f"--access-logfile {log}"
    assert (on.env["STATSD_HOST"], on.env["STATSD_PORT"]) == ("127.0.0.1", "18083")
    assert "PROXY_ACCESS_LOG" not in on.env
    for launched in (on, off):  # as the image runs it
        assert launched.env["PYTHONOPTIMIZE"] == "2"
        assert launched.env["PYTHONPYCACHEPREFIX"] == str(IMAGE_PYCACHE)
    output = tmp_path / "off.log"
    output.write_text('[INFO] Booting worker\n{"status": 200, "uri": "/1k"}\n{"other": 1}\n')
    assert harness.off_seen(output) == {"access_log_lines": 1}


def test_asyncio_peer_commands(tmp_path):
    extra = {"admin_port": 18081, "statsd_port": 18083, "on_env": {}, "off_env": {}}
    commands = {
        name: peers.launch(peers.PEERS[name], tmp_path / name, 18080, 18082, extra)
        for name in harness.ASYNCIO_PEERS
    }
    for name, launch in commands.items():
        assert launch.env["BENCH_UPSTREAM"] == "http://127.0.0.1:18082", name
        assert launch.env["PYTHONPATH"] == str(peers.PLUGINS), name
        assert launch.args[0].startswith(str(peers.PEERS_VENV)), name
        assert peers.PEERS[name].python and harness.expected_processes(peers.PEERS[name]) == 3
    aiohttp = commands["aiohttp"].args
    assert aiohttp[1].endswith("bench_aiohttp.py") and aiohttp[-2:] == ["--processes", "2"]
    uvicorn = commands["uvicorn"].args
    for option in (["--workers", "2"], ["--loop", "uvloop"], ["--http", "httptools"]):
        assert " ".join(option) in " ".join(uvicorn)
    assert "--no-access-log" in uvicorn and uvicorn[-1] == "bench_asgi:app"
    granian = " ".join(commands["granian"].args)
    assert "--interface asgi" in granian and "--workers 2" in granian
    assert granian.endswith("--no-access-log --log-level warning bench_asgi:app")


class _ProbeUpstream(http.server.BaseHTTPRequestHandler):
    """The upstream's probe (peers.upstream's /probe/ location) on a thread; ``lossy``
    names what it gets wrong, as a faulty proxy would."""

    lossy = ""

    def do_GET(self):
        body = peers.PROBE_BODY[:-1] + b"?" if self.lossy == "body" else peers.PROBE_BODY
        self.send_response(200)
        kind = "application/octet-stream" if self.lossy == "type" else peers.PROBE_TYPE
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if self.lossy != "header":
            self.send_header("X-Bench-Echo", self.headers.get("X-Bench-Probe", ""))
        self.send_header("X-Bench-Args", self.path.partition("?")[2])
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200 if self.lossy == "method" else 405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("lossy", ["", "body", "type", "header", "method"])
def test_check_peer_tells_an_intact_proxy_from_a_lossy_one(lossy):
    handler = type("Handler", (_ProbeUpstream,), {"lossy": lossy})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        check = harness.check_peer(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    if not lossy:
        assert check["problems"] == [] and check["body_bytes"] == 1024
        return
    [problem] = check["problems"]
    expected = {"body": "not the same bytes", "type": "content-type", "header": "x-bench-echo",
                "method": "POST status 200"}  # fmt: skip
    assert expected[lossy] in problem
    assert harness.check_peer(1)["problems"]  # nothing listening: a problem, not a crash


@pytest.mark.slow
def test_asyncio_peers_start_and_pass_the_check():
    """Each asyncio peer starts from bench/.venv-peers and passes the correctness check
    (a few seconds: no load). scripts/test installs the peers (scripts/install/bench.sh)."""
    tools = [peers.PEERS_VENV / "bin" / tool for tool in ("python", "uvicorn", "granian")]
    if not all(tool.exists() for tool in tools):
        pytest.skip("bench/.venv-peers is not installed (scripts/install/bench.sh)")
    peer_list = ",".join(harness.ASYNCIO_PEERS)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--check", "--no-install", "--peers", peer_list],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in harness.ASYNCIO_PEERS:
        assert f"- {peers.PEERS[name].label}: passed" in done.stdout, name


def test_check_mode_plans_every_main_proxy_with_no_case():
    options = parse_args(["--check"])
    sessions = harness.plan(options)
    names = [peer.name for peer, _ in sessions]
    assert set(harness.ASYNCIO_PEERS) <= set(names) and "haproxy" in names
    assert "direct" not in names and not any(peer.tls or peer.ws for peer, _ in sessions)
    assert all(cases == [] for _, cases in sessions) and harness.plan_repeats(options) == []


def test_repeats_run_in_rounds_across_the_peers():
    options = parse_args(["--sections", "main", "--peers", "haproxy,aiohttp,lbproxy-2w"])
    assert options.repeats == 3 and parse_args(["--smoke"]).repeats == 1
    first = {peer.name: [c.name for c in cases] for peer, cases in harness.plan(options)}
    assert first["aiohttp"] == ["main:/1k@1", "main:/1k@100#1", "main:/1k@400"]
    rounds = harness.plan_repeats(options)
    assert [[(peer.name, [c.name for c in cases]) for peer, cases in each] for each in rounds] == [
        [(name, [f"main:/1k@100#{n}"]) for name in ("haproxy", "lbproxy-2w", "aiohttp")]
        for n in (2, 3)
    ]  # A, B, C, A, B, C: the sessions' order in every round
    assert harness.plan_repeats(parse_args(["--smoke"])) == []
    assert harness.plan_repeats(parse_args(["--connections", "1,400"])) == []


def test_report_shows_the_median_run_and_every_split():
    def split(text):
        return {"requests_split": text, "cpu_split": text, "pids": [1, 2]}

    data = {
        "results": [
            _row("haproxy", 100, 30000, 20.0) | {"repeat": 1},
            _row("haproxy", 100, 34000, 18.0) | {"repeat": 2},
            _row("haproxy", 100, 32000, 19.0) | {"repeat": 3},
            _row("lbproxy-2w", 100, 8000, 150.0) | {"repeat": 1, "workers": split("50/50")},
            _row("lbproxy-2w", 100, 4000, 190.0) | {"repeat": 2, "workers": split("97/3")},
            _row("lbproxy-2w", 100, 7000, 160.0) | {"repeat": 3, "workers": split("52/48")},
            _row("lbproxy-2w", 1, 3000, 170.0) | {"workers": split("100/0")},
        ],
        "sessions": [
            {"peer": "haproxy", "label": "HAProxy", "kind": "haproxy"},
            {"peer": "lbproxy-2w", "label": "lbproxy", "kind": "lbproxy"},
        ],
    }
    report.derive(data)
    lbproxy = data["repeats"]["lbproxy-2w"]
    assert lbproxy["runs"] == 3 and lbproxy["shown_repeat"] == 3
    assert (lbproxy["rps"]["median"], lbproxy["rps"]["min"], lbproxy["rps"]["max"]) == (
        7000, 4000, 8000
    )  # fmt: skip
    assert lbproxy["cpu_us_per_req"]["median"] == 160.0
    assert [s["requests"] for s in lbproxy["splits"]] == ["50/50", "97/3", "52/48"]
    assert data["summary"]["lbproxy-2w"]["rps_100"] == 7000
    assert data["summary"]["lbproxy-2w"]["ratio_100"] == pytest.approx(7000 / 32000)
    table = "\n".join(report.main_table(data))
    assert table.count("| lbproxy | 100 |") == 1 and table.count("| HAProxy | 100 |") == 1
    assert "| lbproxy | 100 | 7,000 | 21.9% |" in table
    assert "| 52/48 (52/48) | 3: 4,000–8,000; 50/50, 97/3, 52/48 |" in table
    assert "| 3: 30,000–34,000 |" in table  # HAProxy: one process, no split
    assert "| 100/0 (100/0) |  |" in table  # 1 connection: not repeated


def test_worker_split_from_ss_and_cpu_ticks():
    output = (
        "0 0 127.0.0.1:8080 127.0.0.1:50001 ino:101 sk:1 cgroup:/ <->\n"
        "\t ts sack cubic bytes_sent:9000 bytes_acked:9000 bytes_received:3000 segs_out:9\n"
        "0 0 127.0.0.1:8080 127.0.0.1:50002 ino:102 sk:2 cgroup:/ <->\n"
        "\t ts sack cubic bytes_sent:100 segs_out:1\n"
        "0 0 127.0.0.1:8080 127.0.0.1:50003 ino:103 sk:3 cgroup:/ <->\n"
        "\t ts sack cubic bytes_received:1000 segs_out:3\n"
    )
    assert harness.parse_ss(output) == {"101": 3000, "102": 0, "103": 1000}
    ticks = ({11: 100, 12: 100}, {11: 152, 12: 148})
    sample = {11: (2, 3000), 12: (1, 1000), None: (1, 0)}
    split = harness.worker_split([11, 12], ticks, sample, 400)
    assert split["requests"] == [300, 100] and split["requests_split"] == "75/25"
    assert split["connections"] == [2, 1] and split["unaccepted"] == 1
    assert split["connections_split"] == "67/33" and split["cpu_split"] == "52/48"
    assert split["cpu_s"] == [52 / processes.CLOCK_TICKS, 48 / processes.CLOCK_TICKS]
    no_sample = harness.worker_split([11, 12], ticks, None, 400)
    assert no_sample["requests_split"] == "–" and no_sample["requests"] is None
    assert harness.worker_split([], ticks, None, 400) is None
    assert harness.split_text([0, 0]) == "–" and harness.split_text([1, 1, 2]) == "50/25/25"
    # A sample read as wrk closes its connections sees none: the fuller one is kept.
    closing = {11: (0, 0), 12: (0, 0), None: (0, 0)}
    assert harness.fuller(closing, sample) is sample and harness.fuller(sample, None) is sample
    assert harness.fuller(dict(sample), sample) is not sample  # equal: the later
