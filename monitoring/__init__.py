"""lbproxy's monitoring: the StatsD → carbon → graphite-web stack, SLOs and their evaluator.

- ``monitoring/stack`` (``monitoring.stack``): start, stop and check the local stack;
- ``monitoring/slo.yaml``: the SLIs as Graphite queries, their SLOs and alert thresholds;
- ``python -m monitoring.evaluate``: budget use and colour of each SLI, from Graphite or a .jtl;
- ``monitoring/grafana-dashboard.json`` and ``monitoring/grafana-alerts.yaml``: for Grafana.

See docs/monitoring.md.
"""
