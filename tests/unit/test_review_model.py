"""The review's declarations and the health score's arithmetic (no database)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.collectors.review import OPTIONS, status_family
from hiw_monitor.config import load
from hiw_monitor.errors import ConfigError
from hiw_monitor.review.checks import BY_ID, CHECKS
from hiw_monitor.review.model import (
    CATEGORIES,
    COMPONENT_WEIGHTS,
    SEVERITIES,
    STATUSES,
    Finding,
    finding,
    score,
)

DOCS = Path(__file__).parents[2] / "docs" / "review.md"
REQUIRED = {
    "pg_stat_statements_loaded", "expected_indexes", "rls_enabled", "ssl_enabled",
    "scram_passwords", "password_complexity_trigger", "student_pii_columns",
    "retention_overdue", "audit_log_active", "backup_verification", "wal_archiving_enabled",
    "matview_fresh", "job_queue_backlog", "connection_headroom", "superuser_sessions",
    "autovacuum_enabled", "tables_analyzed", "data_growth"}


def test_every_check_the_issue_names_is_declared_once_with_a_remediation():
    ids = [c.id for c in CHECKS]
    assert len(ids) == len(set(ids))
    assert set(ids) >= REQUIRED
    for check in CHECKS:
        assert re.fullmatch(r"[a-z][a-z0-9_]+", check.id)
        assert check.category in CATEGORIES
        assert check.severity in SEVERITIES
        assert check.component in COMPONENT_WEIGHTS
        assert check.remediation.strip()
        assert check.title.strip()
        assert check.needs.strip()


def test_harm_sets_the_severity():
    # a COPPA-regulated app: these are critical (the issue's own examples)
    for check in ("rls_enabled", "retention_overdue", "backup_verification",
                  "student_pii_columns"):
        assert BY_ID[check].severity == "critical", check


def test_docs_list_every_check_with_its_grants():
    text = DOCS.read_text()
    for check in CHECKS:
        assert f"`{check.id}`" in text, f"docs/review.md does not describe {check.id}"
    for name in OPTIONS:
        assert f"`{name}`" in text, f"docs/review.md does not describe the option {name}"


findings = st.lists(
    st.builds(lambda check, status: finding(check, status, ""),
              st.sampled_from(CHECKS), st.sampled_from(STATUSES)),
    max_size=40, unique_by=lambda f: f.check.id)


@given(findings)
def test_points_lost_add_up_to_what_the_score_misses(found: list[Finding]):
    result = score(found)
    if all(f.status == "unknown" for f in found):
        assert result.value is None
        return
    assert result.value is not None
    assert 0.0 <= result.value <= 10.0
    assert abs(10.0 - sum(loss.points for loss in result.losses) - result.value) < 0.02
    assert {loss.check for loss in result.losses} == \
        {f.check.id for f in found if f.status != "unknown"}
    for loss in result.losses:
        status = next(f.status for f in found if f.check.id == loss.check)
        assert (loss.points == 0) == (status == "pass"), (loss, status)
    weights = sum(c.weight for c in result.components if c.score is not None)
    assert abs(weights - 1.0) < 1e-3


@given(findings, st.data())
def test_fixing_a_check_never_lowers_the_score(found: list[Finding], data: st.DataObject):
    failing = [f for f in found if f.status in ("fail", "warn")]
    if not failing:
        return
    fixed = data.draw(st.sampled_from(failing))
    before = score(found)
    after = score([finding(f.check, "pass", "") if f is fixed else f for f in found])
    assert before.value is not None
    assert after.value is not None
    assert after.value >= before.value - 1e-9
    # and by exactly the points it lost
    assert abs(after.value - before.value - before.lost(fixed.check.id)) < 0.02


def test_unknown_checks_are_left_out_not_scored_zero():
    passing = finding(BY_ID["rls_enabled"], "pass", "")
    alone = score([passing])
    with_unknown = score([passing, finding(BY_ID["ssl_enabled"], "unknown", "no grant")])
    assert alone.value == with_unknown.value == 10.0
    assert with_unknown.lost("ssl_enabled") == 0.0


def test_a_component_without_a_measured_check_shares_its_weight():
    result = score([finding(BY_ID["backup_freshness"], "fail", ""),
                    finding(BY_ID["rls_enabled"], "pass", "")])
    measured = {c.name: c for c in result.components if c.score is not None}
    assert set(measured) == {"backups", "security"}
    assert measured["backups"].weight == pytest.approx(0.20 / 0.45, abs=1e-3)
    assert result.value == pytest.approx(10 * 0.25 / 0.45, abs=1e-2)
    assert result.lost("backup_freshness") == pytest.approx(10 * 0.20 / 0.45, abs=1e-2)


def test_status_is_one_hot_per_check():
    found = [finding(check, status, "x")
             for check, status in zip(CHECKS, STATUSES * 10, strict=False)]
    family = status_family("t", found)
    per_check: dict[str, list[float]] = {}
    for sample in family.samples:
        assert sample.labels["target"] == "t"
        per_check.setdefault(sample.labels["check"], []).append(sample.value)
    assert set(per_check) == {f.check.id for f in found}
    assert all(sorted(values) == [0.0, 0.0, 0.0, 1.0] for values in per_check.values())
    assert family.findings == tuple(found)


def test_an_unknown_check_id_in_disabled_checks_is_a_config_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("collectors:\n  review:\n    disabled_checks: [ssl_enabled, no_such]\n")
    with pytest.raises(ConfigError) as raised:
        load(config_path_overrides(config), environ={}, require_targets=False)
    assert "no_such" in raised.value.message
    assert "disabled_checks" in raised.value.message


def test_bad_school_hours_and_time_zone_are_config_errors(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("collectors:\n  review:\n    school_hours: '17:00-07:00'\n"
                      "    school_timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError) as raised:
        load(config_path_overrides(config), environ={}, require_targets=False)
    text = raised.value.message + "".join(str(a) for a in raised.value.also)
    assert "school_hours" in text
    assert "Mars/Olympus" in text


def config_path_overrides(path: Path):
    from hiw_monitor.config import Overrides
    return Overrides(config=str(path))


def test_health_families_evaluate_again_only_the_targets_whose_results_changed():
    from hiw_monitor.health import Health
    from hiw_monitor.snapshot import SnapshotStore

    store = SnapshotStore()
    for name in ("a", "b", "c"):
        store.register(name, f"host={name}", "connections", 15, 45)
        store.set_target(name, up=True)
        store.record_success(name, "connections", [], 100.0, 0.1)
    health = Health(store, clock=lambda: 110.0)
    evaluated: list[str] = []
    real = health._target

    def counting(state, samples, now):
        evaluated.append(state.name)
        return real(state, samples, now)

    health._target = counting  # type: ignore[method-assign]
    first = health.families(110.0)
    assert sorted(evaluated) == ["a", "b", "c"]
    evaluated.clear()
    assert [f.samples for f in health.families(110.0)] == [f.samples for f in first]
    assert evaluated == []
    store.record_success("b", "connections", [], 111.0, 0.1)
    health.families(111.0)
    assert evaluated == ["b"]
    evaluated.clear()
    health.families(200.0)  # a's, b's and c's results went stale: each evaluated again
    assert sorted(evaluated) == ["a", "b", "c"]
