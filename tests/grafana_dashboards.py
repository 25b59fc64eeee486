"""Grafana dashboard JSON as Grafana reads it, for the structure tests of
monitoring/grafana-dashboard.json (Graphite) and
monitoring/prometheus/grafana-dashboard.json (Prometheus).

- ``export_problems``: what keeps a dashboard from being an "Export for sharing
  externally" that works in any Grafana: one data source input in ``__inputs``,
  ``__requires``, a ``datasource`` variable that every panel, query and query
  variable uses, the input's ``${DS_...}`` as that variable's current value;
- ``imported``: what Grafana's import (``POST /api/dashboards/import``) stores:
  every ``${NAME}`` of an input replaced by the chosen value in every string of
  the JSON, other ``${...}`` (variables) left alone, ``__inputs`` dropped;
- ``chosen``: the data source a ``datasource`` variable starts on when the
  dashboard loads: the option whose uid is the current value, else the one whose
  name is the current text, else the first (Grafana's variable validation).
"""

from __future__ import annotations

import json
import re

VARIABLE = "${datasource}"
INPUT_REFERENCE = re.compile(r"\$\{.+?\}")  # Grafana's import matches the same pattern


def all_panels(document: dict) -> list[dict]:
    """Every panel, with those inside (collapsed) rows."""
    found = []
    for panel in document["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def datasource_refs(document: dict) -> list[tuple[str, object]]:
    """(where, the ``datasource`` it names) for every panel, query and query variable."""
    refs: list[tuple[str, object]] = []
    for panel in all_panels(document):
        if panel["type"] == "row":
            continue
        where = f"panel {panel.get('id')} ({panel.get('title')})"
        refs.append((where, panel.get("datasource")))
        for target in panel.get("targets", []):
            refs.append((f"{where} query {target.get('refId')}", target.get("datasource")))
    for variable in document.get("templating", {}).get("list", []):
        if variable["type"] in ("query", "adhoc"):
            refs.append((f"variable {variable['name']}", variable.get("datasource")))
    for annotation in document.get("annotations", {}).get("list", []):
        if not annotation.get("builtIn"):
            refs.append((f"annotation {annotation.get('name')}", annotation.get("datasource")))
    return refs


def datasource_variable(document: dict) -> dict:
    (variable,) = [v for v in document["templating"]["list"] if v["type"] == "datasource"]
    return variable


def export_problems(document: dict, plugin: str) -> list[str]:
    problems = []
    sources = [i for i in document.get("__inputs", []) if i.get("type") == "datasource"]
    if len(sources) != 1 or sources[0].get("pluginId") != plugin:
        problems.append(f"__inputs: not one {plugin} data source: {sources}")
    reference = "${" + sources[0]["name"] + "}" if sources else None
    panel_types = {p["type"] for p in all_panels(document) if p["type"] != "row"}
    want = {("grafana", "grafana"), ("datasource", plugin)} | {("panel", t) for t in panel_types}
    requires = {(r.get("type"), r.get("id")) for r in document.get("__requires", [])}
    if requires != want:
        problems.append(f"__requires: {sorted(requires)}, not {sorted(want)}")
    variables = document.get("templating", {}).get("list", [])
    kinds = [(v["name"], v.get("query")) for v in variables if v["type"] == "datasource"]
    if kinds != [("datasource", plugin)]:
        problems.append(f"datasource variables: {kinds}, not one 'datasource' of {plugin}")
    elif variables[0]["type"] != "datasource":
        problems.append("the datasource variable is not the first (the others query it)")
    elif variables[0].get("current", {}).get("value") != reference:
        problems.append(f"the datasource variable's value is not the input {reference}")
    for where, ref in datasource_refs(document):
        if ref != {"type": plugin, "uid": VARIABLE}:
            problems.append(f"{where}: datasource {ref}, not the variable")
    if reference is not None:
        body = {k: v for k, v in document.items() if k != "__inputs"}
        uses = json.dumps(body).count(reference)
        if uses != 1:
            problems.append(f"{reference} used {uses} times, not once (the variable's value)")
    return problems


def imported(document: dict, values: dict[str, str]) -> dict:
    """The dashboard as Grafana's import stores it, given a value for each input."""
    names = {i["name"] for i in document["__inputs"]}
    assert names == set(values), f"the import asks for {sorted(names)}"

    def substitute(match: re.Match) -> str:
        return values.get(match.group()[2:-1], match.group())

    def walk(node):
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items() if key != "__inputs"}
        if isinstance(node, list):
            return [walk(value) for value in node]
        if isinstance(node, str):
            return INPUT_REFERENCE.sub(substitute, node)
        return node

    return walk(document)


def chosen(variable: dict, sources: list[tuple[str, str]]) -> str:
    """The uid a ``datasource`` variable starts on among (name, uid) data sources."""
    current = variable.get("current", {})
    for _, uid in sources:
        if uid == current.get("value"):
            return uid
    for name, uid in sources:
        if name == current.get("text"):
            return uid
    return sources[0][1]
