"""Write the Grafana files from monitoring/slo.yaml: python -m monitoring.grafana [--check].

- ``monitoring/grafana-dashboard.json``: the dashboard, in the shape of Grafana's
  "Export for sharing externally": ``__inputs`` asks for a Graphite data source on
  import, and every panel and query uses the ``datasource`` variable (see
  ``datasource_variable``); a ``service`` variable: one service, or All = ``*``;
- ``monitoring/grafana-alerts.yaml``: the error-budget alert rules, in Grafana's
  file-provisioning format (``provisioning/alerting/``);
- ``monitoring/grafana-datasource.yaml``: the data source (``provisioning/datasources/``),
  pointing at monitoring/stack's graphite-web.

``--check`` writes nothing and exits 1 if a file differs from what slo.yaml
gives (tests/tools/test_monitoring.py runs it), so the files never drift from the SLOs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from monitoring.slo import (
    SLO_FILE,
    Slo,
    budget_target,
    event_targets,
    graphite_duration,
    load,
    sli_target,
)

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "grafana-dashboard.json"
ALERTS = HERE / "grafana-alerts.yaml"
DATASOURCE = HERE / "grafana-datasource.yaml"
DATASOURCE_UID = "lbproxy-graphite"
DATASOURCE_NAME = "lbproxy Graphite"
GRAPHITE_URL = "http://127.0.0.1:8013"
# The dashboard's one data source input (import) and the variable every panel uses.
DS_INPUT = "DS_GRAPHITE"
DS = {"type": "graphite", "uid": "${datasource}"}
GRAFANA_VERSION = "10.4.0"  # in __requires (shown on import); the JSON is schemaVersion 39
S = "stats.counters.lbproxy.$service"
T = "stats.timers.lbproxy.$service"
G = "stats.gauges.lbproxy.$service"


def panels(slo: Slo) -> list[tuple[str, list[dict]]]:
    """(row title, [panel spec]) in order; a spec: title, unit, targets, and extras."""
    policy = slo.policy
    avail, latency, saturation = (slo.slis[n] for n in ("availability", "latency", "saturation"))
    budget_thresholds = [
        (None, "green"),
        (100 * policy.green_max, "yellow"),
        (100 * policy.orange_min, "orange"),
        (100 * policy.red_min, "red"),
    ]
    slo_panels = [
        {
            "title": f"{sli.name.capitalize()} SLI over the trailing "
            f"{graphite_duration(policy.window)}, against its SLO",
            "unit": "percent",
            "description": sli.description,
            "targets": [
                sli_target(sli, policy),
                f"alias(constantLine({100 * sli.objective:g}), 'SLO {100 * sli.objective:g}%')",
            ],
            "min": None,
        }
        for sli in (avail, latency, saturation)
    ]
    slo_panels.append(
        {
            "title": "Error budget use (green <= 60%, orange >= 80% for 5 min, red >= 100%)",
            "unit": "percent",
            "description": "Bad share over the trailing window / the share the SLO allows. "
            "Alerts: monitoring/grafana-alerts.yaml; evaluator: python -m monitoring.evaluate.",
            "targets": [budget_target(sli, policy) for sli in slo.slis.values()],
            "thresholds": budget_thresholds,
        }
    )
    return [
        ("SLIs and error budgets", slo_panels),
        (
            "Traffic",
            [
                {
                    "title": "Requests/s by service",
                    "unit": "reqps",
                    "targets": [f"aliasByNode({T}.request.count_ps, 3)"],
                },
                {
                    "title": "Responses/s by status class",
                    "unit": "reqps",
                    "targets": [f"groupByNode({S}.status.*.rate, 5, 'sumSeries')"],
                },
                {
                    "title": "Body bytes/s in and out",
                    "unit": "Bps",
                    "targets": [
                        f"alias(sumSeries({S}.bytes_in.rate), 'in')",
                        f"alias(sumSeries({S}.bytes_out.rate), 'out')",
                    ],
                },
            ],
        ),
        (
            "Errors",
            [
                {
                    "title": "Errors/s by kind",
                    "unit": "reqps",
                    "targets": [f"groupByNode({S}.errors.*.rate, 5, 'sumSeries')"],
                },
                {
                    "title": "5xx share of routed requests",
                    "unit": "percent",
                    "targets": [
                        f"alias(asPercent(fallbackSeries(sumSeries({S}.status.5xx.rate), "
                        f"scale(sumSeries({T}.request.count_ps), 0)), "
                        f"sumSeries({T}.request.count_ps)), '5xx %')"
                    ],
                },
                {
                    "title": "Retries/s",
                    "unit": "reqps",
                    "targets": [f"alias(sumSeries({S}.retries.rate), 'retries/s')"],
                },
            ],
        ),
        (
            "Latency",
            [
                {
                    "title": "Request time percentiles by service (proxy in to response out)",
                    "unit": "ms",
                    "targets": [
                        f"aliasByNode({T}.request.{{upper_50,upper_90,upper_99}}, 3, 5)",
                        f"alias(constantLine({latency.threshold_ms:g}), "
                        f"'latency SLI threshold {latency.threshold_ms:g} ms')",
                    ],
                },
                {
                    "title": "Upstream (to response headers) and connect p99 by service",
                    "unit": "ms",
                    "targets": [
                        f"aliasByNode({T}.upstream.upper_99, 3, 4)",
                        f"aliasByNode({T}.connect.upper_99, 3, 4)",
                    ],
                },
                {
                    "title": f"Share of requests under {latency.threshold_ms:g} ms, per flush",
                    "unit": "percent",
                    "targets": [
                        "alias(scale(offset(scale(divideSeries("
                        f"{event_targets(latency)[0]}, {event_targets(latency)[1]}), -1), 1), "
                        f"100), 'under {latency.threshold_ms:g} ms %')"
                    ],
                },
            ],
        ),
        (
            "Balance, in flight and pools",
            [
                {
                    "title": "Requests/s per host (balance)",
                    "unit": "reqps",
                    "targets": [f"aliasByNode({T}.hosts.*.request.count_ps, 3, 5)"],
                },
                {
                    "title": "Request p90 per host",
                    "unit": "ms",
                    "targets": [f"aliasByNode({T}.hosts.*.request.upper_90, 3, 5)"],
                },
                {
                    "title": "Health events per host (ejected, returned, down, up)",
                    "unit": "short",
                    "targets": [
                        f"aliasByNode({S}.hosts.*.{{ejected,returned,down,up}}.count, 3, 5, 6)"
                    ],
                },
                {
                    "title": "Hosts in rotation (fewest seen by a worker)",
                    "unit": "short",
                    "targets": [f"groupByNode({G}.hosts_in_rotation.*, 3, 'minSeries')"],
                },
                {
                    "title": "Requests in flight: per service, and the busiest worker (saturation)",
                    "unit": "short",
                    "targets": [
                        f"groupByNode({G}.in_flight.*, 3, 'sumSeries')",
                        f"alias({saturation.value}, 'busiest worker')",
                        f"alias(constantLine({saturation.limit:g}), "
                        f"'saturation limit {saturation.limit:g} per worker')",
                    ],
                },
                {
                    "title": "Idle pooled connections per host (all workers)",
                    "unit": "short",
                    "targets": [f"groupByNode({G}.hosts.*.pool_idle.*, 5, 'sumSeries')"],
                },
            ],
        ),
    ]


def panel_json(spec: dict, panel_id: int, x: int, y: int, width: int) -> dict:
    defaults: dict = {"unit": spec["unit"], "custom": {"lineWidth": 1, "fillOpacity": 10}}
    if spec.get("thresholds"):
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": colour, "value": value} for value, colour in spec["thresholds"]],
        }
        defaults["custom"]["thresholdsStyle"] = {"mode": "line+area"}
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": spec["title"],
        "description": spec.get("description", ""),
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": width, "h": 8},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "target": target}
            for i, target in enumerate(spec["targets"])
        ],
    }


def datasource_variable(plugin: str, label: str, input_name: str, provisioned: str) -> dict:
    """The ``datasource`` variable (every panel and query names it), whose current
    value serves both ways a dashboard arrives.

    The value is ``${<input_name>}``: on import Grafana replaces that string everywhere
    with the uid of the data source the user picked, so the variable starts on it. A
    provisioned file is not rewritten (``__inputs`` is ignored), no data source has
    that uid, and Grafana takes the option whose name is the current text,
    ``provisioned`` (for Graphite the name monitoring/grafana-datasource.yaml gives
    uid lbproxy-graphite); only when none has it, the first data source of the plugin.
    The variable's menu switches to any other one.
    """
    return {
        "name": "datasource",
        "label": label,
        "type": "datasource",
        "query": plugin,
        "regex": "",
        "current": {"selected": False, "text": provisioned, "value": "${" + input_name + "}"},
        "options": [],
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "refresh": 1,
        "skipUrlSync": False,
    }


def dashboard(slo: Slo) -> dict:
    items = []
    panel_id = 1
    y = 0
    for row_title, specs in panels(slo):
        items.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        per_row = 4 if len(specs) == 4 else 3
        width = 24 // per_row
        for index, spec in enumerate(specs):
            x = (index % per_row) * width
            items.append(panel_json(spec, panel_id, x, y + (index // per_row) * 8, width))
            panel_id += 1
        y += 8 * ((len(specs) + per_row - 1) // per_row)
    return {
        "__inputs": [
            {
                "name": DS_INPUT,
                "label": "Graphite",
                "description": "the Graphite that StatsD feeds with lbproxy's metrics",
                "type": "datasource",
                "pluginId": "graphite",
                "pluginName": "Graphite",
            }
        ],
        "__elements": {},
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
            {"type": "datasource", "id": "graphite", "name": "Graphite", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "id": None,
        "uid": "lbproxy",
        "title": "lbproxy",
        "description": "lbproxy on StatsD + Graphite: generated by python -m monitoring.grafana "
        "from monitoring/slo.yaml",
        "tags": ["lbproxy", "graphite", "slo"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                datasource_variable("graphite", "Graphite", DS_INPUT, DATASOURCE_NAME),
                {
                    "name": "service",
                    "label": "service",
                    "type": "query",
                    "datasource": DS,
                    "query": "stats.timers.lbproxy.*",
                    "definition": "stats.timers.lbproxy.*",
                    "refresh": 2,
                    "includeAll": True,
                    "allValue": "*",
                    "multi": False,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": items,
    }


def alert_rules(slo: Slo) -> dict:
    """Orange and red rules per SLI; the 5-minute hold is in the query (see the comment)."""
    policy = slo.policy
    rules = []
    for sli in slo.slis.values():
        for colour, threshold in (("orange", policy.orange_min), ("red", policy.red_min)):
            rules.append(
                {
                    "uid": f"lbproxy-{sli.name}-{colour}",
                    "title": f"lbproxy {sli.name}: error budget use >= {threshold:.0%} "
                    f"for {policy.hold // 60} min ({colour})",
                    "condition": "C",
                    "data": [
                        {
                            "refId": "A",
                            "relativeTimeRange": {"from": policy.hold, "to": 0},
                            "datasourceUid": DATASOURCE_UID,
                            "model": {
                                "refId": "A",
                                "target": budget_target(sli, policy, service="*"),
                                "intervalMs": 10000,
                                "maxDataPoints": 43200,
                            },
                        },
                        {
                            "refId": "B",
                            "datasourceUid": "__expr__",
                            "model": {
                                "refId": "B",
                                "type": "reduce",
                                "expression": "A",
                                "reducer": "min",
                                "settings": {"mode": ""},
                            },
                        },
                        {
                            "refId": "C",
                            "datasourceUid": "__expr__",
                            "model": {
                                "refId": "C",
                                "type": "math",
                                "expression": f"$B >= {100 * threshold:g}",
                            },
                        },
                    ],
                    "noDataState": "NoData",
                    "execErrState": "Error",
                    "for": "0s",
                    "labels": {"service": "lbproxy", "sli": sli.name, "severity": colour},
                    "annotations": {
                        "summary": f"lbproxy {sli.name} has used >= {threshold:.0%} of its error "
                        f"budget (objective {sli.objective:.1%}) at every point of the last "
                        f"{policy.hold // 60} minutes",
                        "description": sli.description,
                        "runbook_url": "docs/monitoring.md#alerts",
                    },
                    "isPaused": False,
                }
            )
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": "lbproxy-error-budget",
                "folder": "lbproxy",
                "interval": "10s",
                "rules": rules,
            }
        ],
    }


ALERTS_HEADER = """\
# Grafana alert rules (file provisioning: put this file in provisioning/alerting/),
# generated from monitoring/slo.yaml by `python -m monitoring.grafana`: do not edit.
#
# The same policy as python -m monitoring.evaluate. Query A is the SLI's error
# budget use in percent over the trailing window, computed in Graphite:
#   scale(divideSeries(movingSum(bad, W), movingSum(total, W)), 100 / (1 - objective))
# (Graphite's movingSum at t sums the window before t: one flush behind the evaluator).
# "For 5 minutes": A covers the last 5 minutes (relativeTimeRange 300 s), B is
# its minimum, C fires when B >= the threshold; i.e. every point of the last 5
# minutes is at or above it. A null point (no traffic in a whole window) makes
# the minimum NaN (reduce mode strict), so it never fires on missing evidence.
# The hold is in the query, so `for` is 0s (a `for: 5m` on top would make it 10).
# Orange: >= 80%; red: >= 100%. Green (<= 60%) and yellow (between) do not alert.
"""

DATASOURCE_TEXT = f"""\
# Grafana data source (file provisioning: put this file in provisioning/datasources/):
# monitoring/stack's graphite-web. Generated by `python -m monitoring.grafana`.
apiVersion: 1
datasources:
  - name: {DATASOURCE_NAME}
    uid: {DATASOURCE_UID}
    type: graphite
    access: proxy
    url: {GRAPHITE_URL}
    jsonData:
      graphiteVersion: "1.1"
"""


def rendered(slo: Slo) -> dict[Path, str]:
    return {
        DASHBOARD: json.dumps(dashboard(slo), indent=2) + "\n",
        ALERTS: ALERTS_HEADER
        + yaml.safe_dump(alert_rules(slo), sort_keys=False, width=1000, allow_unicode=True),
        DATASOURCE: DATASOURCE_TEXT,
    }


def dashboard_targets(document: dict) -> list[str]:
    return [
        target["target"]
        for panel in document["panels"]
        for target in panel.get("targets", [])
        if target.get("target")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.grafana", description=__doc__)
    parser.add_argument("--slo", type=Path, default=SLO_FILE)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    files = rendered(load(args.slo))
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(HERE.parent)} (python -m monitoring.grafana)")
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
