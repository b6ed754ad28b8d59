"""Backup rules: statuses, thresholds from the config file, the 'unknown' fallback, the
plan (which tables and columns, or why not), the query composed from it, and the transform
on NULL names and successes in the future."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.analysis.backups import Thresholds, archiving_status, backup_status
from hiw_monitor.collectors import backups
from hiw_monitor.collectors.backups import new_state, on_failure, transform
from hiw_monitor.collectors.base import Context, ServerInfo, Step
from hiw_monitor.config import Overrides, load
from hiw_monitor.errors import ConfigError, ReasonedError
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


SERVER = ServerInfo(version_num=150000, version="15.0", in_recovery=False)
SEED_CONFIG_COLUMNS = ("id", "backup_name", "backup_type", "is_enabled")
SEED_LOG_COLUMNS = ("id", "backup_config_id", "status", "start_time", "end_time",
                    "backup_size_bytes", "error_message")


def table_row(role: str, table: str, columns=(), **facts):
    """One row of the plan's discovery query (``backups._TABLES``)."""
    row = {"role": role, "table": table, "schema_exists": True, "usage": True,
           "table_exists": True, "can": True, "me": "hiw_monitor", "columns": list(columns)}
    row.update(facts)
    return row


def discovered(config=None, log=None, config_columns=SEED_CONFIG_COLUMNS,
               log_columns=SEED_LOG_COLUMNS):
    return {"tables": [
        config or table_row("configurations", "backup_configurations", config_columns),
        log or table_row("log", "backup_execution_log", log_columns)]}


def plan_for(rows=None, **options):
    return backups.decide(rows or discovered(), Step({**DEFAULT_OPTIONS, **options}, SERVER))


def reason_for(rows=None, **options):
    with pytest.raises(ReasonedError) as caught:
        plan_for(rows, **options)
    return caught.value.reason


def run_backups(rows, state=None, plan=None):
    context = Context(target="hiw", server=SERVER, options=DEFAULT_OPTIONS,
                      now=1_700_007_200.0, state=state or new_state(), plan=plan or plan_for())
    return list(transform({"backups": rows}, context))


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


# --- the plan: where the tables are, which columns exist, or why the collector cannot run ---


def test_discovery_rows_are_shaped_like_the_discovery_query():
    text = backups._TABLES
    for column in table_row("log", "t"):
        assert re.search(rf"(\bAS |\bt\.){column}\b", text), column
    (query,) = backups.COLLECTOR.plan.queries.values()
    assert query.params(Step(DEFAULT_OPTIONS, SERVER)) == {
        "schema": "public", "configurations": "backup_configurations",
        "log": "backup_execution_log"}


def test_the_plan_names_the_configured_columns_that_exist():
    plan = plan_for()
    assert (plan.schema, plan.configurations, plan.log) == (
        "public", "backup_configurations", "backup_execution_log")
    assert plan.columns["name_column"] == "backup_name"
    assert plan.columns["size_column"] == "backup_size_bytes"
    # optional columns the table lacks (or that are configured empty) are not used
    assert plan.columns["verified_column"] is None
    assert plan.columns["restore_duration_column"] is None
    assert not plan.verification
    assert plan_for(type_column="").columns["type_column"] is None
    verified = plan_for(discovered(log_columns=(*SEED_LOG_COLUMNS, "verified_restore")))
    assert verified.verification


def test_a_missing_table_names_the_option_to_set():
    missing_log = discovered(log=table_row("log", "backup_history", table_exists=False))
    reason = reason_for(missing_log, log_table="backup_history")
    assert reason.code == "undefined_table"
    assert "public.backup_history" in reason.text
    assert "collectors.backups.log_table" in reason.text
    no_schema = discovered(
        config=table_row("configurations", "jobs", schema_exists=False, usage=False,
                         table_exists=False, can=False),
        log=table_row("log", "runs", schema_exists=False, usage=False, table_exists=False,
                      can=False))
    reason = reason_for(no_schema, schema="ops", configurations_table="jobs",
                        log_table="runs")
    assert reason.code == "undefined_table"  # the configurations table is named first
    assert "ops.jobs" in reason.text
    assert "collectors.backups.configurations_table" in reason.text


def test_an_unreadable_table_gives_the_grants_to_run():
    revoked = discovered(log=table_row("log", "backup_execution_log", SEED_LOG_COLUMNS,
                                       can=False))
    reason = reason_for(revoked)
    assert reason.code == "permission_denied"
    assert "GRANT USAGE ON SCHEMA public TO hiw_monitor;" in reason.text
    assert "GRANT SELECT ON public.backup_execution_log TO hiw_monitor;" in reason.text
    no_usage = discovered(config=table_row("configurations", "backup_configurations",
                                           SEED_CONFIG_COLUMNS, usage=False))
    assert "GRANT SELECT ON public.backup_configurations TO hiw_monitor;" in \
        reason_for(no_usage).text


def test_a_missing_required_column_names_the_option():
    reason = reason_for(status_column="outcome")
    assert reason.code == "undefined_column"
    assert "'outcome'" in reason.text
    assert "public.backup_execution_log" in reason.text
    assert "collectors.backups.status_column" in reason.text
    reason = reason_for(discovered(config_columns=("id", "type")))
    assert "collectors.backups.name_column" in reason.text


def composed(plan, **options) -> str:
    step = Step({**DEFAULT_OPTIONS, **options}, SERVER, plan=plan)
    (query,) = backups.COLLECTOR.declared().values()
    return query.text(step).as_string(None)


def test_the_query_is_composed_from_the_plan_with_identifiers_and_literals():
    plan = plan_for(discovered(
        config=table_row("configurations", "Backup Jobs", ("id", "backup_name")),
        log=table_row("log", "runs", ("backup_config_id", "status", "start_time", "end_time",
                                      "verified_restore"))),
        configurations_table="Backup Jobs", log_table="runs")
    text = composed(plan, success_value="done'; DROP TABLE x; --")
    assert '"public"."Backup Jobs" c' in text
    assert '"public"."runs" l' in text
    assert "l.\"status\" = 'done''; DROP TABLE x; --'" in text  # a literal, quoted
    assert "NULL::text AS backup_type" in text  # the type column does not exist
    assert "is_enabled" not in text
    assert "backup_size_bytes" not in text
    assert 'l."verified_restore"' in text
    assert text.rstrip().endswith("ORDER BY 1")
    assert "v ON true" in text  # verification: the newest verified run is joined
    assert "v ON false" in composed(plan_for())
    assert 'WHERE c."is_enabled" IS NOT FALSE' in composed(plan_for())


def test_the_timezone_option_is_the_collections_session_setting():
    session = backups.COLLECTOR.session
    assert session is not None
    assert session(DEFAULT_OPTIONS) == {}
    assert session({**DEFAULT_OPTIONS, "timezone": "America/New_York"}) == {
        "TimeZone": "America/New_York"}


def test_the_collector_declares_instead_of_fetching():
    assert backups.COLLECTOR.fetch is None
    assert backups.COLLECTOR.plan is not None
    assert list(backups.COLLECTOR.declared()) == ["backups"]


def test_restore_verification_families_follow_the_plan():
    verified = plan_for(discovered(log_columns=(*SEED_LOG_COLUMNS, "verified_restore",
                                                "restore_duration_seconds")))
    row = backup_row("nightly", 1, verified=True, restore_seconds=600.0,
                     restore_age=HOUR, restore_at=1_700_000_000.0)
    with_it = run_backups([row], plan=verified)
    assert values_of(with_it, "hiw_backup_restore_verification_configured") == {(): 1.0}
    assert values_of(with_it, "hiw_backup_restore_test_success") == {("nightly", "full"): 1.0}
    assert values_of(with_it, "hiw_backup_rto_met") == {("nightly", "full"): 1.0}
    without = run_backups([backup_row("nightly", 1)])
    assert values_of(without, "hiw_backup_restore_verification_configured") == {(): 0.0}
    assert not [f for f in without if f.name == "hiw_backup_restore_test_success"]
