"""Reading the bundled Grafana dashboards and the PromQL in their panels.

The static tests (test_dashboards.py) and end-to-end tests against a real Prometheus share
these helpers. ``panel_queries()`` yields every panel query with Grafana's variables
replaced, ready to send to Prometheus's query API::

    from dashboards_lib import panel_queries

    for dashboard, panel, expr in panel_queries():
        ...

The PromQL reader is deliberately small: it tokenizes an expression well enough to list
its vector selectors (metric name and label matchers) and the functions it calls, which is
all the static checks need. Prometheus itself (promtool, the query API) is the judge of
whether an expression is valid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
CATALOG = ROOT / "docs" / "metrics.md"
ALERTS = ROOT / "alerts"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TARGET_MATCHER = ("target", "=~", "$target")

# Aggregation operators and functions of PromQL (Prometheus 2.x/3.x).
PROMQL_FUNCTIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio", "abs", "absent", "absent_over_time", "acos",
    "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing", "end",
    "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta",
    "increase", "info", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10",
    "log2", "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round",
    "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc",
    "sqrt", "start", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh",
    "time", "timestamp", "vector", "year"
})
# Keywords that are not metric names; the first group takes a parenthesised label list.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LIST_KEYWORDS | {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
                (?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},@])
""", re.VERBOSE)


@dataclass(frozen=True)
class Selector:
    """One vector selector: ``name{label op "value", ...}``."""

    name: str
    matchers: tuple[tuple[str, str, str], ...] = ()


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    functions: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) pairs, whitespace and comments dropped.

    >>> tokens('rate(x{a="}"}[5m])')
    [('ident', 'rate'), ('op', '('), ('ident', 'x'), ('op', '{'), ('ident', 'a'), ('op', '='), ('string', '"}"'), ('op', '}'), ('range', '[5m]'), ('op', ')')]
    """  # noqa: E501
    out = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[pos:pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("ws", "comment"):
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body if text[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def parse(expr: str) -> Parsed:
    """The vector selectors and the functions of a PromQL expression.

    >>> p = parse('topk(5, sum by (target, le) (rate(hiw_a_bucket{target=~"$target"}[5m])))'
    ...           ' / on (target) group_left hiw_b{target=~"x", status!="ok"} > bool 0.5')
    >>> [s.name for s in p.selectors]
    ['hiw_a_bucket', 'hiw_b']
    >>> p.selectors[1].matchers
    (('target', '=~', 'x'), ('status', '!=', 'ok'))
    >>> sorted(p.functions)
    ['rate', 'sum', 'topk']
    >>> [s.name for s in parse('sum(x) without (instance) + hiw:rule:ratio offset 5m').selectors]
    ['x', 'hiw:rule:ratio']
    """
    toks = tokens(expr)
    result = Parsed()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in LABEL_LIST_KEYWORDS and following == "(":
            i = toks.index(("op", ")"), i) + 1  # a label list is never nested
            continue
        if kind == "ident" and text in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and following in ("(", "by", "without"):
            result.functions.add(text)  # a call, or an aggregation: sum by (l) (...)
            i += 1
            continue
        if kind == "ident" or (kind, text) == ("op", "{"):
            name = text if kind == "ident" else ""
            if kind == "ident":
                i += 1
                if i == len(toks) or toks[i] != ("op", "{"):
                    result.selectors.append(Selector(name))
                    continue
            i += 1  # past "{"
            matchers: list[tuple[str, str, str]] = []
            while toks[i] != ("op", "}"):
                label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2]
                if value[0] != "string":
                    raise ValueError(f"label matcher {label}{op}{value[1]} in {expr!r}")
                matchers.append((label, op, _unquote(value[1])))
                i += 4 if toks[i + 3] == ("op", ",") else 3
            i += 1  # past "}"
            name = next((v for label, op, v in matchers if (label, op) == ("__name__", "=")),
                        name)
            result.selectors.append(Selector(name, tuple(matchers)))
            continue
        i += 1
    return result


def substitute(expr: str) -> str:
    """Replace Grafana's variables the way a query for every target would.

    >>> substitute('rate(x{target=~"$target"}[$__rate_interval]) + y{target=~"${target}"}')
    'rate(x{target=~".*"}[1m]) + y{target=~".*"}'
    """
    expr = re.sub(r"\$(?:\{target(?::\w+)?\}|target\b)", ".*", expr)
    return re.sub(r"\$(?:\{__(?:rate_)?interval\}|__(?:rate_)?interval\b)", "1m", expr)


# ---- dashboards --------------------------------------------------------------------------

def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels nested in (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row."""
    return (p for p in all_panels(dashboard.get("panels", [])) if p.get("type") != "row")


def panel_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard title, panel title, expr) for every query of every panel, with
    ``$target`` replaced by ``.*`` and ``$__rate_interval`` / ``$__interval`` by ``1m``."""
    for path in dashboard_files():
        dashboard = load(path)
        for panel in query_panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield dashboard["title"], panel["title"], substitute(target["expr"])


# ---- what may be referenced --------------------------------------------------------------

_CATALOG_ROW = re.compile(r"^\| `(hiw_[a-z0-9_]+)` \| ([a-z]+) \| ([^|]*) \|", re.MULTILINE)


def catalog() -> dict[str, frozenset[str]]:
    """Metric name -> labels, from docs/metrics.md; a histogram's (and a summary's)
    ``_bucket``/``_sum``/``_count`` series count as cataloged (``_bucket`` with ``le``)."""
    metrics: dict[str, frozenset[str]] = {}
    for name, kind, labels in _CATALOG_ROW.findall(CATALOG.read_text(encoding="utf-8")):
        label_set = frozenset(label.strip() for label in labels.split(",") if label.strip())
        metrics[name] = label_set
        if kind in ("histogram", "summary"):
            metrics[f"{name}_sum"] = label_set
            metrics[f"{name}_count"] = label_set
        if kind == "histogram":
            metrics[f"{name}_bucket"] = label_set | {"le"}
    return metrics


def recording_rules() -> set[str]:
    """Names recorded by the rule files in alerts/ (none when there are none)."""
    names: set[str] = set()
    for path in sorted(ALERTS.glob("*.rules.yml")):
        for group in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("groups", []):
            names.update(rule["record"] for rule in group.get("rules", []) if "record" in rule)
    return names
