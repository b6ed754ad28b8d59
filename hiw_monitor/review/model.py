"""The review's vocabulary and the health score: pure data and arithmetic.

A :class:`Check` is a declaration (id, category, severity, component, title, the GRANTs
it needs, the remediation). Evaluating it gives a :class:`Finding` (status, a human
reason, the measured numbers). :func:`score` turns findings into the 0-10 health score
with, for every point lost, the check that lost it.

The score's rules (docs/review.md):

- each check weighs by its severity: critical 4, high 3, medium 2, low 1;
- each status earns a share of that weight: pass 1, warn 0.5, fail 0; ``unknown`` checks
  are left out (not measured is not healthy, and not unhealthy: they are listed apart);
- a component's score is 10 x earned / weighed over its measured checks;
- the health score is the weighted mean of the measured components' scores
  (:data:`COMPONENT_WEIGHTS`; a component with no measured check, e.g. replication on a
  lone server, is left out and the others share its weight);
- so the points a check loses are 10 x (its component's share) x (its share of the
  component's weight) x (1 - earned): they add up to exactly 10 - score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "unknown"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "unknown")
Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
Category = Literal["performance", "security", "compliance", "backup", "scalability",
                   "maintenance"]
CATEGORIES: tuple[Category, ...] = ("performance", "security", "compliance", "backup",
                                    "scalability", "maintenance")
Component = Literal["backups", "availability", "latency", "connections", "maintenance",
                    "security", "replication"]

SEVERITY_WEIGHT: Mapping[str, float] = {"critical": 4.0, "high": 3.0, "medium": 2.0,
                                        "low": 1.0}
EARNED: Mapping[str, float] = {"pass": 1.0, "warn": 0.5, "fail": 0.0}
# Component weights (sum 1): what an outage of each costs a COPPA-regulated classroom app.
COMPONENT_WEIGHTS: Mapping[str, float] = {
    "backups": 0.20,
    "availability": 0.15,
    "latency": 0.15,
    "connections": 0.10,
    "maintenance": 0.10,
    "security": 0.25,  # security and compliance: student data
    "replication": 0.05,
}
COMPONENTS: tuple[str, ...] = tuple(COMPONENT_WEIGHTS)


@dataclass(frozen=True, slots=True)
class Check:
    """A review check's declaration. ``source`` says where it is evaluated: ``sql`` in the
    review collector (catalog data and counts), ``metrics`` from other collectors'
    results in the agent's snapshot."""

    id: str
    title: str
    category: Category
    severity: Severity
    component: Component
    source: Literal["sql", "metrics"]
    remediation: str  # the SQL or setting to change
    needs: str = ""  # the privileges (GRANTs) or collectors it reads
    review: str = ""  # where the DBA review asks for it


@dataclass(frozen=True, slots=True)
class Finding:
    """One evaluation of one check."""

    check: Check
    status: Status
    reason: str
    measured: Mapping[str, Any] = field(default_factory=dict)  # numbers shown to people

    def as_dict(self) -> dict[str, Any]:
        c = self.check
        return {"id": c.id, "title": c.title, "category": c.category, "severity": c.severity,
                "component": c.component, "status": self.status, "reason": self.reason,
                "remediation": c.remediation, "needs": c.needs, "measured": dict(self.measured)}


def finding(check: Check, status: Status, reason: str, **measured: Any) -> Finding:
    return Finding(check, status, reason, measured)


@dataclass(frozen=True, slots=True)
class Loss:
    check: str
    points: float


@dataclass(frozen=True, slots=True)
class ComponentScore:
    name: str
    score: float | None  # None: no measured check
    weight: float  # its share of the health score (0 when not measured)
    checks: tuple[str, ...]  # the check ids in it, measured or not


@dataclass(frozen=True, slots=True)
class Score:
    value: float | None  # None when nothing was measured
    components: tuple[ComponentScore, ...]
    losses: tuple[Loss, ...]  # every check measured, with the points it lost (0 if none)

    def lost(self, check: str) -> float:
        return next((loss.points for loss in self.losses if loss.check == check), 0.0)


def score(findings: Sequence[Finding]) -> Score:
    """The health score of ``findings`` (see the module's rules).

    >>> from dataclasses import replace
    >>> a = Check("a", "A", "backup", "critical", "backups", "sql", "fix a")
    >>> b = Check("b", "B", "security", "low", "security", "sql", "fix b")
    >>> s = score([finding(a, "pass", ""), finding(b, "fail", "")])
    >>> s.value, [(c.name, c.score) for c in s.components if c.score is not None]
    (4.444, [('backups', 10.0), ('security', 0.0)])
    >>> round(10 - sum(loss.points for loss in s.losses), 3) == s.value
    True
    >>> score([finding(a, "unknown", "")]).value is None
    True
    """
    by_component: dict[str, list[Finding]] = {name: [] for name in COMPONENTS}
    for f in findings:
        by_component.setdefault(f.check.component, []).append(f)
    measured = {name: [f for f in fs if f.status != "unknown"]
                for name, fs in by_component.items()}
    total = sum(COMPONENT_WEIGHTS.get(name, 0.0) for name, fs in measured.items() if fs)
    components: list[ComponentScore] = []
    losses: list[Loss] = []
    value = 0.0
    for name, fs in by_component.items():
        known = measured[name]
        ids = tuple(f.check.id for f in fs)
        if not known or total == 0:
            components.append(ComponentScore(name, None, 0.0, ids))
            continue
        share = COMPONENT_WEIGHTS.get(name, 0.0) / total
        weighed = sum(SEVERITY_WEIGHT[f.check.severity] for f in known)
        earned = sum(SEVERITY_WEIGHT[f.check.severity] * EARNED[f.status] for f in known)
        component = 10.0 * earned / weighed
        components.append(ComponentScore(name, round(component, 3), round(share, 4), ids))
        value += share * component
        for f in known:
            lost = 10.0 * share * SEVERITY_WEIGHT[f.check.severity] / weighed \
                * (1.0 - EARNED[f.status])
            losses.append(Loss(f.check.id, round(lost, 3)))
    if total == 0:
        return Score(None, tuple(components), ())
    return Score(round(value, 3), tuple(components), tuple(losses))
