"""The bundled alert rules and Alertmanager config, checked with the real tools."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from tools import require

ROOT = Path(__file__).parents[2]
RULES = ROOT / "alerts" / "hiw_monitor.rules.yml"
TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
CATALOG = ROOT / "docs" / "metrics.md"
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "on", "unless", "and", "or", "without",
    "rate", "deriv", "histogram_quantile", "avg_over_time", "absent", "ignoring",
    "group_left", "group_right", "topk", "bool", "offset",
}


def rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules():
    result = run(require("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = run(require("promtool"), "test", "rules", *map(str, TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_accepts_the_example_alertmanager_config():
    result = run(require("amtool"), "check-config",
                 str(ROOT / "alerts" / "alertmanager.example.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_actionable():
    anchors = {line[3:].strip().lower() for line in RUNBOOKS.read_text().splitlines()
               if line.startswith("## ")}
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("page", "ticket"), name
        annotations = alert["annotations"]
        assert annotations["summary"], name
        assert "$value" in annotations["description"], f"{name}: description shows no value"
        url = annotations["runbook_url"]
        assert url.endswith(f"docs/runbooks.md#{name.lower()}"), name
        assert name.lower() in anchors, f"{name}: no section in docs/runbooks.md"
    assert len(anchors) == len(alerts()), "a runbook section without an alert"


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_the_required_alerts_exist():
    names = {alert["alert"] for alert in alerts()}
    assert {"HiwBackupStaleWarning", "HiwBackupStaleCritical", "HiwBackupNeverSucceeded",
            "HiwBackupFailingRepeatedly", "HiwBackupRunningTooLong", "HiwWalArchivingFailing",
            "HiwBackupRPOBreached", "HiwQueryLatencySLABreached", "HiwTargetDown",
            "HiwAgentDown", "HiwAgentAbsent", "HiwCollectorFailing",
            "HiwBackupMonitoringBlind", "HiwConnectionsHigh", "HiwIdleInTransactionLong",
            "HiwLockWaitsPilingUp", "HiwXidWraparoundRisk", "HiwTableBloatHigh",
            "HiwDeadTuplesNotVacuumed", "HiwHealthScoreLow", "HiwReviewCriticalCheckFailing",
            "HiwMaterializedViewStale", "HiwJobQueueBacklog", "HiwRetentionOverdue",
            "HiwAvailabilityBudgetBurnFast", "HiwAvailabilityBudgetBurnSlow",
            "HiwLatencyBudgetBurnFast", "HiwLatencyBudgetBurnSlow"} <= names


# Multi-window, multi-burn-rate (SRE workbook, "Alerting on SLOs"): per severity, the
# (long window, short window, burn rate) pairs; the short window is 1/12 of the long one.
BURN_PAIRS = {"page": {("1h", "5m", 14.4), ("6h", "30m", 6.0)},
              "ticket": {("1d", "2h", 3.0), ("3d", "6h", 1.0)}}
ERROR_BUDGETS = {"availability": 0.0005, "latency": 0.05}  # 99.95 %; 5 % of calls > 100 ms
BURN_TERM = re.compile(r"hiw:slo_([a-z]+)_errors:ratio_rate([0-9]+[mhd])\s*/\s*([0-9.]+)"
                       r"\s*>\s*([0-9.]+)")


def test_every_burn_rate_alert_pairs_matching_windows():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    burn_alerts = [a for a in alerts() if "BudgetBurn" in a["alert"]]
    assert {a["alert"] for a in burn_alerts} == {
        f"Hiw{slo.capitalize()}BudgetBurn{speed}" for slo in ERROR_BUDGETS
        for speed in ("Fast", "Slow")}
    for alert in burn_alerts:
        name, severity = alert["alert"], alert["labels"]["severity"]
        assert severity == ("page" if name.endswith("Fast") else "ticket"), name
        terms = BURN_TERM.findall(alert["expr"])
        assert len(terms) == 4, (name, terms)
        assert alert["expr"].count("hiw:") == 4, (name, "a ratio not in a burn-rate term")
        pairs = set()
        for (slo, long, budget, rate), (slo2, short, budget2, rate2) in zip(
                terms[::2], terms[1::2], strict=True):
            assert name.startswith(f"Hiw{slo.capitalize()}"), (name, slo)
            assert slo2 == slo, (name, slo, slo2)
            assert float(budget) == float(budget2) == ERROR_BUDGETS[slo], (name, budget)
            assert rate == rate2, (name, long, short, rate, rate2)  # the same burn rate
            for window in (long, short):
                assert f"hiw:slo_{slo}_errors:ratio_rate{window}" in recorded, (name, window)
            pairs.add((long, short, float(rate)))
        assert pairs == BURN_PAIRS[severity], (name, pairs)


def test_a_check_with_its_own_alert_is_left_out_of_the_critical_check_page():
    by_name = {a["alert"]: a for a in alerts()}
    page = by_name["HiwReviewCriticalCheckFailing"]["expr"]
    match = re.search(r'check!~"([a-z_|]+)"', page)
    assert match, page
    excluded = set(match.group(1).split("|"))
    own = {check for name, alert in by_name.items() if name != "HiwReviewCriticalCheckFailing"
           for check in re.findall(r'hiw_review_check_status\{[^}]*\bcheck="([a-z_]+)"',
                                   alert["expr"])}
    assert {"matview_fresh", "job_queue_backlog", "retention_overdue"} <= own
    assert own <= excluded, f"{own - excluded} would page twice"


def test_rules_reference_only_exported_metrics():
    cataloged = set(re.findall(r"^\| `(hiw_[a-z0-9_]+)` \|", CATALOG.read_text(), re.M))
    histograms = {name for name in cataloged
                  if re.search(rf"^\| `{name}` \| histogram", CATALOG.read_text(), re.M)}
    known = cataloged | {f"{h}_{suffix}" for h in histograms for suffix in
                         ("bucket", "sum", "count")} | {"up"}
    known |= {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])  # drop label values
        expr = re.sub(r"\{[^}]*\}", "{}", expr)  # and label matchers
        expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # and ranges
        expr = re.sub(r"\b(by|on|without|ignoring)\s*\([a-z_,\s]*\)", "", expr)  # label lists
        names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - PROMQL_WORDS
        names = {n for n in names if not re.fullmatch(r"[0-9e]+", n)}
        assert names <= known, (rule.get("alert") or rule.get("record"), names - known)
