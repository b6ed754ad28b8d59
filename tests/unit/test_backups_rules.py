"""Backup rules: statuses, thresholds from the config file, the 'unknown' fallback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.analysis.backups import Thresholds, archiving_status, backup_status
from hiw_monitor.collectors.backups import new_state, on_failure
from hiw_monitor.config import Overrides, load
from hiw_monitor.errors import ConfigError

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
    assert values == {"healthy": 0, "warning": 0, "critical": 0, "unknown": 1}
