"""monitoring/slo.yaml read into objects, and the Graphite expressions derived from it.

The evaluator computes budget use in Python from each SLI's per-point
``bad``/``total`` (or ``value``) series; Grafana's alert rules and the
dashboard's SLI panels compute the same in Graphite with ``movingSum`` (see
:func:`budget_target`). Graphite's ``movingSum`` at a point sums the window
*before* it, so its value at ``t + step`` is the evaluator's at ``t``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

SLO_FILE = Path(__file__).resolve().parent / "slo.yaml"
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str | int | float) -> int:
    """'10s', '5m', '1h', '7d' (or a number of seconds) → seconds."""
    if isinstance(text, int | float):
        return int(text)
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ValueError(f"not a duration (10s, 5m, 1h, 7d): {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Policy:
    window: int  # seconds
    hold: int  # seconds
    green_max: float
    orange_min: float
    red_min: float
    stale_after: int  # seconds


@dataclass(frozen=True)
class Sli:
    name: str
    description: str
    objective: float
    kind: str  # "ratio": bad/total events; "threshold": time slices of value >= limit
    bad: str | None = None
    total: str | None = None
    value: str | None = None
    limit: float | None = None
    threshold_ms: float | None = None
    # The same SLI from Prometheus (lbproxy's /metrics): PromQL with $service (a
    # regex); bad/total (cumulative counts) for a ratio, value for a threshold.
    promql: dict | None = None

    @property
    def allowed(self) -> float:
        """The share of bad events the objective allows (the budget, as a ratio)."""
        return 1.0 - self.objective

    def targets(self, service: str = "*") -> dict[str, str]:
        """The Graphite targets the evaluator fetches, with $service filled in.

        A ratio SLI's ``bad`` falls back to zeros on ``total``'s points when its
        pattern matches no series yet: a service that never failed has no
        ``status.5xx`` counter at all, and that is 0 bad events, not "no data".
        """
        if self.kind == "ratio":
            bad, total = (getattr(self, n).replace("$service", service) for n in ("bad", "total"))
            return {"bad": f"fallbackSeries({bad}, scale({total}, 0))", "total": total}
        return {"value": self.value.replace("$service", service)}


@dataclass(frozen=True)
class Slo:
    policy: Policy
    slis: dict[str, Sli]


def load(path: Path = SLO_FILE) -> Slo:
    document = yaml.safe_load(Path(path).read_text())
    raw = document["policy"]
    policy = Policy(
        window=seconds(raw["window"]),
        hold=seconds(raw["hold"]),
        green_max=float(raw["green_max"]),
        orange_min=float(raw["orange_min"]),
        red_min=float(raw["red_min"]),
        stale_after=seconds(raw.get("stale_after", "2m")),
    )
    if not policy.green_max < policy.orange_min <= policy.red_min:
        raise ValueError(f"{path}: need green_max < orange_min <= red_min")
    slis = {}
    for name, entry in document["slis"].items():
        kind = "threshold" if "value" in entry else "ratio"
        objective = float(entry["objective"])
        if not 0 < objective < 1:
            raise ValueError(f"{path}: {name}: objective must be between 0 and 1")
        if kind == "ratio" and not (entry.get("bad") and entry.get("total")):
            raise ValueError(f"{path}: {name}: a ratio SLI needs bad and total")
        if kind == "threshold" and entry.get("limit") is None:
            raise ValueError(f"{path}: {name}: a threshold SLI needs limit")
        slis[name] = Sli(
            name=name,
            description=" ".join(str(entry.get("description", "")).split()),
            objective=objective,
            kind=kind,
            bad=entry.get("bad"),
            total=entry.get("total"),
            value=entry.get("value"),
            limit=float(entry["limit"]) if entry.get("limit") is not None else None,
            threshold_ms=entry.get("threshold_ms"),
            promql=entry.get("promql"),
        )
    return Slo(policy, slis)


# -- Graphite expressions for Grafana ------------------------------------------
def graphite_duration(total: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if total % size == 0:
            return f"{total // size}{unit}"
    return f"{total}s"


def event_targets(sli: Sli, service: str = "$service") -> tuple[str, str]:
    """(bad, total) per point as Graphite expressions; for a threshold SLI,
    ``isNonNull`` makes each flush interval with a value one event, and one bad
    event when the value is at or above the limit."""
    if sli.kind == "ratio":
        targets = sli.targets(service)
        return targets["bad"], targets["total"]
    value = sli.value.replace("$service", service)
    return f"isNonNull(removeBelowValue({value}, {sli.limit:g}))", f"isNonNull({value})"


def budget_target(sli: Sli, policy: Policy, service: str = "$service") -> str:
    """Budget use in percent over the trailing window, as one Graphite expression."""
    bad, total = event_targets(sli, service)
    window = graphite_duration(policy.window)
    scale = 100.0 / sli.allowed
    return (
        f"alias(scale(divideSeries(movingSum({bad}, '{window}'), "
        f"movingSum({total}, '{window}')), {scale:g}), '{sli.name} budget use')"
    )


def sli_target(sli: Sli, policy: Policy, service: str = "$service") -> str:
    """The SLI in percent (good share) over the trailing window."""
    bad, total = event_targets(sli, service)
    window = graphite_duration(policy.window)
    return (
        f"alias(scale(offset(scale(divideSeries(movingSum({bad}, '{window}'), "
        f"movingSum({total}, '{window}')), -1), 1), 100), '{sli.name}')"
    )
