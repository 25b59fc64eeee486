"""The JMeter plans, run for real through jmeter/run, and the runner's verdict.

JMeter 2.13 exits 0 whatever happens (a plan it cannot load, failed samples),
so these tests prove both halves: the plans pass against the proxy and its
mocks, and the runner fails a run with a failed sample, a plan that does not
load, or no sample at all. About a minute in all; the runner installs JMeter if
it is missing (scripts/test has already run scripts/install/jmeter.sh).

The runs use fixed ports (jmeter/proxy.yaml: 18180, admin 19180, mocks
19181-19183; the broken config 18280/19280): the runner refuses to start on a
port already taken.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
JMETER = REPO / "jmeter"
RUNNER = JMETER / "runner.py"

pytestmark = pytest.mark.slow


def load_runner():
    spec = importlib.util.spec_from_file_location("jmeter_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


runner = load_runner()


def run_plan(plan: Path, results: Path, *args: str, timeout: float = 240):
    """Run jmeter/run; return (exit status, its output, summary.json or None, .jtl rows)."""
    done = subprocess.run(
        [str(JMETER / "run"), str(plan), "--results", str(results), "--quiet", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    summary_path = results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    jtl = results / "results.jtl"
    rows = runner.read_jtl(jtl) if jtl.exists() else []
    return done.returncode, output, summary, rows


# --- the plans pass ---------------------------------------------------------


def test_integration_plan_passes(tmp_path):
    status, output, summary, rows = run_plan(JMETER / "integration.jmx", tmp_path, "--start")
    assert status == 0, output
    assert summary["verdict"] == "PASS"
    assert summary["errors"] == 0
    assert summary["samples"] == len(rows) >= 25
    assert all(row["success"] == "true" for row in rows)
    scenarios = {row["label"].split(" ")[0].split(".")[0] for row in rows}
    assert scenarios == {str(n) for n in range(1, 9)}
    codes = {row["label"].split(" ")[0]: row["responseCode"] for row in rows}
    assert (codes["3"], codes["7"], codes["8.2"]) == ("404", "502", "504")
    assert summary["memory"]["peak_rss_mib"] > 0  # sampled: master and 2 workers
    assert summary["memory"]["processes"] == 3
    assert "verdict   PASS" in output


def test_performance_smoke_passes(tmp_path):
    """The performance plan for 30 s with 20 users: the CI smoke of the 10-minute run."""
    status, output, summary, rows = run_plan(
        JMETER / "performance.jmx",
        tmp_path,
        "--start",
        "-J",
        "duration=30",
        "-J",
        "users=20",
        "-J",
        "rampup=5",
        timeout=150,
    )
    assert status == 0, output
    assert summary["verdict"] == "PASS"
    assert summary["samples"] == len(rows) > 100
    assert summary["errors"] == 0 and summary["error_pct"] == 0
    assert {row["label"] for row in rows} == {
        "GET my-service",
        "GET my-service2",
        "GET my-service3",
    }
    assert 20 <= summary["seconds"] <= 35
    assert summary["tps"] > 0
    latency = summary["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert summary["memory"]["samples"] >= 20
    for line in ("samples ", "errors ", "TPS ", "latency ", "memory ", "verdict   PASS"):
        assert line in output


# --- the verdict fails what JMeter lets pass ----------------------------------


def test_runner_fails_a_run_with_a_failed_sample(tmp_path):
    """A config where the dead service has a live host: scenario 7 gets 200, not 502."""
    config = yaml.safe_load((JMETER / "proxy.yaml").read_text())
    proxy = config["proxy"]
    proxy["listen"]["port"], proxy["admin"]["port"] = 18280, 19280
    dead = next(service for service in proxy["services"] if service["name"] == "dead")
    dead["hosts"] = [{"address": "127.0.0.1", "port": 19181}]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))

    results = tmp_path / "results"
    status, output, summary, rows = run_plan(
        JMETER / "integration.jmx", results, "--start", "--config", str(broken)
    )
    assert status == 1, output
    assert summary["verdict"] == "FAIL"
    failed = [row for row in rows if row["success"] != "true"]
    assert [row["label"].split(" ")[0] for row in failed] == ["7"]
    assert failed[0]["responseCode"] == "200"
    assert "\n" in failed[0]["failureMessage"]  # why the .jtl is read with csv, not by lines
    assert summary["errors"] == 1 and summary["samples"] == len(rows)
    assert "FAILED 7 service with only a dead host gets 502 [200]" in output
    assert "verdict   FAIL: 1 failed sample(s)" in output


def test_runner_fails_a_plan_that_does_not_load(tmp_path):
    plan = tmp_path / "truncated.jmx"
    plan.write_text((JMETER / "integration.jmx").read_text()[:3000])
    status, output, summary, rows = run_plan(plan, tmp_path / "results")
    assert status == 1, output
    assert rows == []
    assert summary["samples"] == 0
    assert any(reason.startswith("plan did not load") for reason in summary["reasons"])
    assert "empty run" in output


def test_runner_fails_an_empty_run(tmp_path):
    """A plan that loads and runs no sample (0 users): nothing was tested, so FAIL."""
    status, output, summary, _ = run_plan(
        JMETER / "performance.jmx", tmp_path, "-J", "users=0", "-J", "duration=5"
    )
    assert status == 1, output
    assert summary["reasons"] == ["empty run: no sample in the .jtl"]


def test_runner_refuses_bad_arguments(tmp_path):
    status, output, _, _ = run_plan(tmp_path / "missing.jmx", tmp_path)
    assert status == 2
    assert "no plan at" in output


# --- the runner's arithmetic, without JMeter ----------------------------------

JTL_HEADER = "timeStamp,elapsed,label,responseCode,responseMessage,success,failureMessage\n"


def summarize(tmp_path, text: str, died=None, **outcome):
    jtl = tmp_path / "results.jtl"
    jtl.write_text(text)
    outcome = runner.JMeterOutcome(jtl, outcome.pop("returncode", 0), 1.0, **outcome)
    sampler = runner.MemorySampler(None, tmp_path / "memory.csv")
    sampler.samples = [(0.0, 80 * runner.MIB, 40 * runner.MIB, 3), (1.0, 90 * runner.MIB, 0, 3)]
    return runner.summarize(Path("x.jmx"), tmp_path, outcome, sampler, died)


def test_summary_reads_multiline_failure_messages(tmp_path):
    text = JTL_HEADER + (
        "1000,10,ok,200,OK,true,\n"
        '1010,30,"bad, one",502,Bad Gateway,false,"Test failed: code expected to equal /\n'
        '****** received  : [[[502]]]\n****** comparison: [[[200]]]\n/"\n'
        "1040,20,ok,200,OK,true,\n"
    )
    summary = summarize(tmp_path, text)
    assert summary["samples"] == 3
    assert summary["errors"] == 1
    assert summary["error_pct"] == pytest.approx(33.333)
    assert summary["failures"][0]["label"] == "bad, one"
    assert summary["failures"][0]["message"].count("\n") == 3
    assert summary["seconds"] == 0.06  # first start 1000 ms, last end 1060 ms
    assert summary["tps"] == 50.0
    assert summary["latency_ms"] == {"p50": 20, "p90": 30, "p99": 30, "max": 30, "mean": 20.0}
    assert summary["memory"]["peak_rss_mib"] == 90.0
    assert summary["memory"]["final_rss_mib"] == 90.0
    assert summary["verdict"] == "FAIL"
    assert "FAILED bad, one [502]: Test failed" in runner.render(summary)


def test_summary_passes_only_a_clean_complete_run(tmp_path):
    clean = JTL_HEADER + "1000,10,ok,200,OK,true,\n"
    assert summarize(tmp_path, clean)["verdict"] == "PASS"
    assert summarize(tmp_path, clean, returncode=1)["reasons"] == ["JMeter exited with 1"]
    assert summarize(tmp_path, clean, timed_out=True)["verdict"] == "FAIL"
    assert summarize(tmp_path, clean, died="proxy (exit 1)")["verdict"] == "FAIL"
    loaded_badly = summarize(tmp_path, clean, load_error="Error in NonGUIDriver x")
    assert loaded_badly["verdict"] == "FAIL"
    assert summarize(tmp_path, JTL_HEADER)["reasons"] == ["empty run: no sample in the .jtl"]


def test_percentile_is_nearest_rank():
    ordered = list(range(1, 101))
    assert [runner.percentile(ordered, f) for f in (0.5, 0.9, 0.99, 1.0)] == [50, 90, 99, 100]
    assert runner.percentile([7], 0.99) == 7
    assert runner.percentile([], 0.5) == 0


def test_memory_sampler_counts_a_process_and_its_children(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = runner.MemorySampler(child.pid, tmp_path / "memory.csv", interval=0.05)
        sampler.start()
        time.sleep(0.3)
        sampler.stop()
    finally:
        child.kill()
        child.wait()
    assert sampler.samples and all(rss > 0 for _, rss, _, _ in sampler.samples)
    assert (tmp_path / "memory.csv").read_text().startswith("seconds,rss_bytes,pss_bytes")
