"""The Prometheus side of monitoring/: alert rules checked and unit-tested by
promtool (green, orange and red series), and the Grafana dashboard for a
Prometheus data source."""

from __future__ import annotations

import json
import re
import subprocess

from tests.grafana_dashboards import (
    chosen,
    datasource_refs,
    datasource_variable,
    export_problems,
    imported,
)
from tests.processes import REPO

PROMETHEUS = REPO / "monitoring" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )


def test_the_rules_pass_promtool_check():
    result = promtool("check", "rules", "rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_the_rules_reach_green_orange_and_red_on_their_series():
    result = promtool("test", "rules", "tests.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_would_catch_a_wrong_colour(tmp_path):
    """The control: the same test with red expected where the series is orange fails."""
    text = (PROMETHEUS / "tests.yaml").read_text()
    broken = text.replace("severity: orange, sli: availability", "severity: red, sli: availability")
    (tmp_path / "rules.yaml").write_text((PROMETHEUS / "rules.yaml").read_text())
    (tmp_path / "tests.yaml").write_text(broken)
    result = subprocess.run(
        ["promtool", "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0


def dashboard() -> dict:
    return json.loads((PROMETHEUS / "grafana-dashboard.json").read_text())


def test_the_dashboard_is_an_export_that_asks_for_a_prometheus():
    """Grafana's "Export for sharing externally" shape: one Prometheus input, and every
    panel, query and the service variable on the datasource variable."""
    document = dashboard()
    assert export_problems(document, "prometheus") == []
    assert [i["name"] for i in document["__inputs"]] == ["DS_PROMETHEUS"]
    assert len(datasource_refs(document)) >= 13  # 6 panels, 7 queries, the variable


def test_the_dashboard_starts_on_the_imported_prometheus_or_a_provisioned_one():
    document = dashboard()
    # Imported: the Prometheus the user picks, not the first one listed.
    shared = imported(document, {"DS_PROMETHEUS": "theirs"})
    assert "${DS_" not in json.dumps(shared)
    sources = [("Prometheus", "first"), ("Their Prometheus", "theirs")]
    assert chosen(datasource_variable(shared), sources) == "theirs"
    assert {ref["uid"] for _, ref in datasource_refs(shared)} == {"${datasource}"}
    # Provisioned from the file (nothing substituted): the one named "Prometheus",
    # Grafana's name for a first Prometheus data source, else the first listed.
    variable = datasource_variable(document)
    assert chosen(variable, [("Thanos", "thanos"), ("Prometheus", "prom")]) == "prom"
    assert chosen(variable, [("Thanos", "thanos"), ("Mimir", "mimir")]) == "thanos"


def test_the_dashboards_metrics_are_lbproxys_or_recording_rules():
    document = dashboard()
    names = {
        name
        for panel in document["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(lbproxy[a-z_:]*)", target["expr"])
    }
    rules = (PROMETHEUS / "rules.yaml").read_text()
    lbproxy_metrics = (REPO / "app" / "observe" / "prometheus.py").read_text()
    for name in names:  # each a metric lbproxy exports, or a recording rule
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert (
            f'"{base}"' in lbproxy_metrics
            or f'"{base.removeprefix("lbproxy_")}"' in (lbproxy_metrics)
            or f"record: {name}" in rules
        ), name


def test_the_evaluator_counts_events_per_series_so_a_pod_leaving_is_no_restart():
    from monitoring.evaluate import _events

    pod_a = {0: 100.0, 10: 110.0, 20: 120.0}
    pod_b = {0: 50.0, 10: 55.0}  # gone after t=10: the sum drops, no event is invented
    restarted = {0: 30.0, 10: 2.0, 20: 5.0}  # a restart: counts from zero again
    assert _events([pod_a, pod_b]) == {10: 15.0, 20: 10.0}
    assert _events([restarted]) == {10: 2.0, 20: 3.0}
    assert _events([]) == {}
