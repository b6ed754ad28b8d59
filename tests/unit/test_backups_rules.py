"""Backup rules: statuses, thresholds from the config file, the 'unknown' fallback, and
the transform on NULL names and successes in the future."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.analysis.backups import Thresholds, archiving_status, backup_status
from hiw_monitor.collectors.backups import new_state, on_failure, transform
from hiw_monitor.collectors.base import Context, ServerInfo
from hiw_monitor.config import Overrides, load
from hiw_monitor.errors import ConfigError
from hiw_monitor.exposition import Exposition
from hiw_monitor.snapshot import SnapshotStore

HOUR = 3600.0


@given(st.floats(min_value=0, max_value=1e7), st.floats(min_value=0, max_value=1e7))
def test_status_only_worsens_with_age(a, b):
    order = ["healthy", "warning", "critical"]
    younger, older = sorted((a, b))
    assert order.index(backup_status(younger)) <= order.index(backup_status(older))


@pytest.mark.parametrize(("hours", "expected"), [
    (0, "healthy"), (23.99, "healthy"), (24, "warning"), (47.99, "warning"), (48, "critical"),
    (500, "critical"),
])
def test_review_boundaries(hours, expected):
    assert backup_status(hours * HOUR) == expected


def test_custom_thresholds():
    weekly = Thresholds(8 * 24 * HOUR, 9 * 24 * HOUR)
    assert backup_status(7 * 24 * HOUR, weekly) == "healthy"
    assert backup_status(8.5 * 24 * HOUR, weekly) == "warning"


def test_archiving_never_archived_but_failing():
    assert archiving_status("always", True, None, 5.0) == "failing"
    assert archiving_status("on", False, 1.0, None) == "disabled"


def test_thresholds_from_yaml_and_their_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("collectors:\n  backups:\n    thresholds:\n"
                    "      weekly: {warning_after: 8d, critical_after: 9d}\n")
    config = load(Overrides(config=str(good), dsn="host=h dbname=d"), environ={})
    assert config.collectors["backups"].options["thresholds"]["weekly"] == \
        Thresholds(8 * 86400.0, 9 * 86400.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("collectors:\n  backups:\n    thresholds:\n"
                   "      weekly: {warning_after: 9d, critical_after: 8d}\n"
                   "    log_table: 'x; DROP TABLE y'\n")
    with pytest.raises(ConfigError) as error:
        load(Overrides(config=str(bad), dsn="host=h dbname=d"), environ={})
    paths = {error.value.path, *(p.path for p in error.value.also)}
    assert paths == {"collectors.backups.thresholds", "collectors.backups.log_table"}


def test_on_failure_reports_known_backups_as_unknown():
    state = new_state()
    assert next(iter(on_failure("t", state, {}, "permission_denied"))).samples == []
    state.known = {"nightly": "full"}
    family = next(iter(on_failure("t", state, {}, "timeout")))
    values = {s.labels["status"]: s.value for s in family.samples}
    assert values == {"healthy": 0, "warning": 0, "critical": 0, "unknown": 1, "future": 0}


# --- the transform on rows shaped by the collector's SQL (issue 10, items 7 and 9) -------

DEFAULT_OPTIONS = load(environ={}, require_targets=False).collectors["backups"].options


def backup_row(name: str | None, config_id: int = 1, **values):
    row = {"backup_name": name, "backup_id": str(config_id), "backup_type": "full",
           "last_success": 1_700_000_000.0, "age": 2 * HOUR, "last_size": 10.0,
           "last_duration": 60.0, "average_size": 10.0, "failures_24h": 0,
           "last_status": "success", "last_run": 1_699_999_940.0, "last_has_error": False,
           "running": 0, "running_for": None, "verified": None, "restore_seconds": None,
           "restore_age": None, "restore_at": None}
    row.update(values)
    return row


def run_backups(rows, state=None):
    server = ServerInfo(version_num=150000, version="15.0", in_recovery=False)
    context = Context(target="hiw", server=server, options=DEFAULT_OPTIONS,
                      now=1_700_007_200.0, state=state or new_state())
    return list(transform({"backups": rows, "meta": [{"verification": False}]}, context))


def values_of(families, name: str) -> dict[tuple[str, ...], float]:
    (family,) = [f for f in families if f.name == name]
    return {tuple(v for k, v in sorted(s.labels.items()) if k != "target"): s.value
            for s in family.samples}


def status_by_name(families) -> dict[str, str]:
    statuses = values_of(families, "hiw_backup_status")
    return {labels[0]: labels[1] for labels, value in statuses.items() if value == 1}


def test_null_backup_names_get_a_label_and_break_nothing():
    state = new_state()
    families = run_backups([backup_row("nightly", 1), backup_row(None, 5, age=50 * HOUR),
                            backup_row(None, 6, backup_type=None)], state)
    assert status_by_name(families) == {"nightly": "healthy", "(unnamed, id 5)": "critical",
                                         "(unnamed, id 6)": "healthy"}
    for family in families:
        for sample in family.samples:
            assert all(isinstance(v, str) for v in sample.labels.values()), sample
    # known to the fallback under the same labels, and it never fails either
    assert set(state.known) == {"nightly", "(unnamed, id 5)", "(unnamed, id 6)"}
    (fallback,) = on_failure("hiw", state, DEFAULT_OPTIONS, "timeout")
    assert {s.labels["backup_name"] for s in fallback.samples} == set(state.known)


def test_a_null_name_alone_renders():
    store = SnapshotStore()
    store.register("hiw", "dsn", "backups", 60, 180)
    store.record_success("hiw", "backups", run_backups([backup_row(None, 9)]), 100.0, 0.1)
    body = Exposition(store, lambda: 100.0).get().body.decode()
    assert 'backup_name="(unnamed, id 9)"' in body
    assert "hiw_exposition_dropped_families_total{" not in body


@given(st.floats(min_value=-1e9, max_value=-1e-6))
def test_a_success_in_the_future_is_its_own_status(age):
    assert backup_status(age) == "future"
    assert backup_status(age, Thresholds(8 * 24 * HOUR, 9 * 24 * HOUR)) == "future"


def test_a_success_in_the_future_is_reported_not_healthy_and_not_clamped():
    families = run_backups([backup_row("skewed", 1, age=-3 * HOUR),
                            backup_row("nightly", 2, age=30 * HOUR)])
    assert status_by_name(families) == {"skewed": "future", "nightly": "warning"}
    assert values_of(families, "hiw_backup_age_seconds")[("skewed", "full")] == -3 * HOUR
    in_future = values_of(families, "hiw_backup_last_success_in_future")
    assert in_future == {("skewed", "full"): 1.0, ("nightly", "full"): 0.0}
    # the RPO is judged on the successes that are not in the future
    assert values_of(families, "hiw_backup_newest_success_age_seconds") == {(): 30 * HOUR}
    assert values_of(families, "hiw_backup_rpo_met") == {(): 0.0}
    only_future = run_backups([backup_row("skewed", 1, age=-60.0)])
    assert values_of(only_future, "hiw_backup_newest_success_age_seconds") == {}
    assert values_of(only_future, "hiw_backup_rpo_met") == {(): 0.0}
