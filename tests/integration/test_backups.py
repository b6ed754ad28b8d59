"""The backups and wal_archiving collectors on real PostgreSQL 15 and 18."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
from conftest import MONITOR_PASSWORD, start_server
from helpers import running_agent, sample, wait_for

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.config import ConnectionSettings, Overrides, TargetConfig, load
from hiw_monitor.exposition import Exposition
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

pytestmark = pytest.mark.integration
DEFAULTS = load(environ={}, require_targets=False).collectors
_names = itertools.count()

SEED_SCHEMA = """
CREATE TABLE backup_configurations (id serial PRIMARY KEY, backup_name text NOT NULL,
                                    backup_type text, is_enabled boolean DEFAULT true);
CREATE TABLE backup_execution_log (id serial PRIMARY KEY, backup_config_id int, status text,
    start_time timestamptz, end_time timestamptz, backup_size_bytes bigint,
    error_message text, verified_restore boolean, restore_duration_seconds numeric);
"""


def add_backup(conn, name: str, kind: str = "full", table: str = "backup_configurations") -> int:
    return conn.execute(f"INSERT INTO {table} (backup_name, backup_type) VALUES (%s, %s) "
                        "RETURNING id", [name, kind]).fetchone()[0]


def add_run(conn, config_id: int, status: str, ended_hours_ago: float | None,
            duration_min: float = 10, size: int = 1000, **extra) -> None:
    started = f"now() - interval '{(ended_hours_ago or 0) * 60 + duration_min} minutes'"
    ended = "NULL" if ended_hours_ago is None else f"now() - interval '{ended_hours_ago} hours'"
    columns = ", ".join(["backup_config_id", "status", "start_time", "end_time",
                         "backup_size_bytes", *extra])
    values = ", ".join(["%s", "%s", started, ended, "%s", *["%s"] * len(extra)])
    conn.execute(f"INSERT INTO backup_execution_log ({columns}) VALUES ({values})",
                 [config_id, status, size, *extra.values()])


class BackupDb:
    """A database of its own inside the shared cluster, readable by hiw_monitor."""

    def __init__(self, server, ddl: str = SEED_SCHEMA, grant: str = "public") -> None:
        self.server = server
        self.name = f"backups_{next(_names)}_{int(time.time() * 1000) % 100000}"
        server.cluster.execute(f'CREATE DATABASE "{self.name}"')
        self.conn = server.cluster.connect(self.name)
        self.conn.execute(ddl)
        self.conn.execute(f"GRANT USAGE ON SCHEMA {grant} TO hiw_monitor")
        self.conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {grant} TO hiw_monitor")
        self.store = SnapshotStore()
        self.state = BY_NAME["backups"].new_state()
        self.target = Target(TargetConfig("db", server.cluster.dsn(self.name, user="hiw_monitor"),
                                          password=MONITOR_PASSWORD), ConnectionSettings())
        self.store.register("db", "db", "backups", 60, 180)
        self._settings: dict[str, Any] = {}

    def collect(self, **options):
        """One poll. The same options give the same settings object, as in the agent: the
        plan made on this connection is reused, not made again because of the test."""
        key = repr(sorted(options.items()))
        if key not in self._settings:
            base = DEFAULTS["backups"]
            self._settings[key] = replace(
                base, options=MappingProxyType({**base.options, **options}))
        return run_collection(self.target, BY_NAME["backups"], self._settings[key],
                              self.store, self.state)

    def text(self, at: float | None = None) -> str:
        """The exposition now, or as a scrape at Unix time ``at`` would see it."""
        clock = time.time if at is None else (lambda: at)
        return Exposition(self.store, clock).get().body.decode()

    def stale_at(self) -> float:
        """A moment when the last success is past stale_after (180 s here)."""
        (record,) = self.store.view()[2]
        assert record.last_success_at is not None
        return record.last_success_at + record.stale_after + 1

    def close(self) -> None:
        self.target.close()
        self.conn.close()
        with self.server.admin() as admin:
            admin.execute(f'DROP DATABASE "{self.name}" WITH (FORCE)')


@pytest.fixture
def db(pg):
    database = BackupDb(pg)
    yield database
    database.close()


def status_of(text: str, name: str) -> str:
    states = [s for s in ("healthy", "warning", "critical", "unknown", "future")
              if sample(text, "hiw_backup_status", backup_name=name, status=s) == 1]
    assert len(states) == 1, (name, states)
    return states[0]


def test_statuses_follow_the_review_thresholds(db):
    c = db.conn
    fresh, day_old, stale = (add_backup(c, n) for n in ("fresh", "day_old", "stale"))
    never = add_backup(c, "never")
    add_backup(c, "empty")  # configured, no log rows at all
    broke, running, no_end = (add_backup(c, n) for n in ("broke", "running", "no_end"))
    add_run(c, fresh, "completed", 2, size=5000)
    add_run(c, fresh, "completed", 26, size=3000)
    add_run(c, day_old, "completed", 30)
    add_run(c, stale, "completed", 50)
    add_run(c, never, "failed", 3)
    add_run(c, never, "failed", 1)
    add_run(c, broke, "completed", 5)
    add_run(c, broke, "failed", 1, error_message="disk full")
    add_run(c, running, "completed", 3)
    c.execute("INSERT INTO backup_execution_log (backup_config_id, status, start_time) "
              "VALUES (%s, 'running', now() - interval '20 minutes')", [running])
    # a success whose end_time was never written does not count: MAX(end_time) ignores it
    c.execute("INSERT INTO backup_execution_log (backup_config_id, status, start_time) "
              "VALUES (%s, 'completed', now() - interval '30 hours')", [no_end])
    older_end = add_backup(c, "older_end")
    add_run(c, older_end, "completed", 30, size=7)
    c.execute("INSERT INTO backup_execution_log (backup_config_id, status, start_time, "
              "backup_size_bytes) VALUES (%s, 'completed', now() - interval '1 hour', 9)",
              [older_end])
    assert db.collect().error is None
    text = db.text()
    expected = {"fresh": "healthy", "day_old": "warning", "stale": "critical",
                "never": "critical", "empty": "critical", "broke": "healthy",
                "running": "healthy", "no_end": "critical", "older_end": "warning"}
    assert {name: status_of(text, name) for name in expected} == expected
    assert sample(text, "hiw_backup_never_succeeded", backup_name="never") == 1
    assert sample(text, "hiw_backup_never_succeeded", backup_name="empty") == 1
    assert sample(text, "hiw_backup_last_success_timestamp_seconds", backup_name="never") is None
    assert sample(text, "hiw_backup_age_seconds", backup_name="empty") is None
    assert sample(text, "hiw_backup_age_seconds", backup_name="fresh") == \
        pytest.approx(2 * 3600, abs=60)
    assert sample(text, "hiw_backup_last_size_bytes", backup_name="fresh") == 5000
    assert sample(text, "hiw_backup_average_size_bytes", backup_name="fresh") == 4000
    assert sample(text, "hiw_backup_last_duration_seconds", backup_name="fresh") == \
        pytest.approx(600, abs=1)
    assert sample(text, "hiw_backup_failures_24h", backup_name="never") == 2
    assert sample(text, "hiw_backup_last_run_status", backup_name="broke", status="failure") == 1
    assert sample(text, "hiw_backup_running", backup_name="running") == 1
    assert sample(text, "hiw_backup_running_seconds", backup_name="running") == \
        pytest.approx(1200, abs=60)
    assert sample(text, "hiw_backup_last_run_status", backup_name="running", status="running") == 1
    assert sample(text, "hiw_backup_rpo_met") == 1  # "fresh" is younger than 24 h
    assert sample(text, "hiw_backups_configured") == 9
    assert sample(text, "hiw_backup_never_succeeded", backup_name="no_end") == 1
    assert sample(text, "hiw_backup_age_seconds", backup_name="no_end") is None
    assert sample(text, "hiw_backup_age_seconds", backup_name="older_end") == \
        pytest.approx(30 * 3600, abs=60)
    assert sample(text, "hiw_backup_last_size_bytes", backup_name="older_end") == 7


def test_per_name_thresholds(db):
    weekly = add_backup(db.conn, "weekly")
    daily = add_backup(db.conn, "daily")
    add_run(db.conn, weekly, "completed", 5 * 24)
    add_run(db.conn, daily, "completed", 5 * 24)
    assert db.collect(thresholds={"weekly": _thresholds("8d", "9d")}).error is None
    text = db.text()
    assert status_of(text, "weekly") == "healthy"
    assert status_of(text, "daily") == "critical"
    assert sample(text, "hiw_backup_warning_threshold_seconds", backup_name="weekly") == 8 * 86400


def _thresholds(warning: str, critical: str):
    from hiw_monitor.collectors.backups import _parse_thresholds

    return _parse_thresholds({"x": {"warning_after": warning, "critical_after": critical}})["x"]


def test_timestamps_without_time_zone_use_the_configured_zone(pg):
    ddl = SEED_SCHEMA.replace("timestamptz", "timestamp without time zone")
    database = BackupDb(pg, ddl)
    try:
        config = add_backup(database.conn, "local_clock")
        # the app writes New York wall-clock times, 20 hours ago
        database.conn.execute(
            "INSERT INTO backup_execution_log (backup_config_id, status, start_time, end_time)"
            " VALUES (%s, 'completed', (now() AT TIME ZONE 'America/New_York') - interval "
            "'21 hours', (now() AT TIME ZONE 'America/New_York') - interval '20 hours')",
            [config])
        assert database.collect(timezone="America/New_York").error is None
        age = sample(database.text(), "hiw_backup_age_seconds", backup_name="local_clock")
        assert age == pytest.approx(20 * 3600, abs=120)
        assert status_of(database.text(), "local_clock") == "healthy"
    finally:
        database.close()


def test_renamed_schema_is_mapped_by_configuration(pg):
    ddl = """
    CREATE SCHEMA ops;
    CREATE TABLE ops.backup_jobs (job_id int PRIMARY KEY, job_name text);
    CREATE TABLE ops.backup_runs (run_job int, outcome text, started timestamptz,
                                  finished timestamptz, bytes bigint);
    INSERT INTO ops.backup_jobs VALUES (1, 'nightly'), (2, 'weekly');
    INSERT INTO ops.backup_runs VALUES
        (1, 'OK', now() - interval '3 hours', now() - interval '2 hours', 42),
        (2, 'OK', now() - interval '40 hours', now() - interval '39 hours', 7),
        (2, 'ERROR', now() - interval '2 hours', now() - interval '1 hour', NULL);
    """
    database = BackupDb(pg, ddl, grant="ops")
    try:
        sample_ = database.collect(
            schema="ops", configurations_table="backup_jobs", log_table="backup_runs",
            id_column="job_id", name_column="job_name", log_config_column="run_job",
            status_column="outcome", start_column="started", end_column="finished",
            size_column="bytes", success_value="OK")
        assert sample_.error is None, sample_.error
        text = database.text()
        assert status_of(text, "nightly") == "healthy"
        assert status_of(text, "weekly") == "warning"
        assert sample(text, "hiw_backup_last_size_bytes", backup_name="nightly") == 42
        assert sample(text, "hiw_backup_failures_24h", backup_name="weekly") == 1
        # no verification column in this schema: said so, not invented
        assert sample(text, "hiw_backup_restore_verification_configured") == 0
        assert sample(text, "hiw_backup_restore_test_success", backup_name="nightly") is None
    finally:
        database.close()


def test_missing_table_names_it_and_the_option(db):
    failed = db.collect(log_table="backup_history")
    assert failed.error.code == "undefined_table"
    assert "public.backup_history" in failed.error.text
    assert "collectors.backups.log_table" in failed.error.text


def test_unreadable_tables_report_known_backups_as_unknown(db):
    add_run(db.conn, add_backup(db.conn, "nightly"), "completed", 1)
    assert db.collect().error is None
    assert status_of(db.text(), "nightly") == "healthy"
    db.conn.execute("REVOKE SELECT ON backup_execution_log FROM hiw_monitor")
    failed = db.collect()
    assert failed.error.code == "permission_denied"
    assert "GRANT SELECT ON public.backup_execution_log TO hiw_monitor" in failed.error.text
    assert sample(db.text(), "hiw_collector_up", collector="backups") == 0
    text = db.text(at=db.stale_at())
    assert status_of(text, "nightly") == "unknown"  # not vanished, not still "healthy"
    assert sample(text, "hiw_collector_up", collector="backups") == 0
    assert sample(text, "hiw_backup_age_seconds", backup_name="nightly") is None
    db.conn.execute("GRANT SELECT ON backup_execution_log TO hiw_monitor")
    assert db.collect().error is None
    assert status_of(db.text(), "nightly") == "healthy"


def test_dropped_table_keeps_reporting_unknown(db):
    add_run(db.conn, add_backup(db.conn, "nightly"), "completed", 1)
    assert db.collect().error is None
    db.conn.execute("DROP TABLE backup_execution_log")
    assert db.collect().error.code == "undefined_table"
    assert status_of(db.text(at=db.stale_at()), "nightly") == "unknown"


def test_a_new_success_turns_critical_into_healthy_while_running(pg, tmp_path):
    database = BackupDb(pg)
    try:
        config_id = add_backup(database.conn, "nightly")
        add_run(database.conn, config_id, "completed", 72)
        path = tmp_path / "fast.yaml"
        path.write_text("collectors:\n  backups: {interval: 500ms}\n")
        dsn = pg.cluster.dsn(database.name, user="hiw_monitor", password=MONITOR_PASSWORD)
        config = load(Overrides(config=str(path), dsn=dsn, target_name="db"), environ={})
        with running_agent(config) as run:
            wait_for(lambda: run.value("hiw_backup_status", backup_name="nightly",
                                       status="critical") == 1, what="critical")
            add_run(database.conn, config_id, "completed", 0.01)
            wait_for(lambda: run.value("hiw_backup_status", backup_name="nightly",
                                       status="healthy") == 1, what="healthy again")
    finally:
        database.close()


@pytest.mark.parametrize("version", ["pg15", "pg18"])
def test_wal_archiving_failing_then_healthy(version):
    server = start_server(version, settings={"archive_mode": "on",
                                             "archive_command": "'false'"})
    store = SnapshotStore()
    target = server.target("db")
    store.register("db", "db", "wal_archiving", 60, 180)

    def collect() -> str:
        assert run_collection(target, BY_NAME["wal_archiving"], DEFAULTS["wal_archiving"],
                              store).error is None
        return Exposition(store).get().body.decode()

    try:
        with server.admin() as admin:
            admin.execute("CREATE TABLE wal_filler AS SELECT generate_series(1, 1000) AS n")
            admin.execute("SELECT pg_switch_wal()")
        wait_for(lambda: sample(collect(), "hiw_wal_archive_failed_total") > 0, timeout=30,
                 what="archive failures")
        text = collect()
        assert sample(text, "hiw_wal_archiving_status", status="failing") == 1
        assert sample(text, "hiw_wal_archive_mode", mode="on") == 1
        with server.admin() as admin:
            admin.execute("ALTER SYSTEM SET archive_command = 'true'")
            admin.execute("SELECT pg_reload_conf()")
        wait_for(lambda: sample(collect(), "hiw_wal_archived_total") > 0, timeout=90,
                 what="archived WAL")
        text = collect()
        assert sample(text, "hiw_wal_archiving_status", status="healthy") == 1
        assert sample(text, "hiw_wal_last_archived_age_seconds") < 120
    finally:
        target.close()
        server.cluster.destroy()


def test_wal_archiving_disabled_by_default(pg):
    store = SnapshotStore()
    target = pg.target("db")
    store.register("db", "db", "wal_archiving", 60, 180)
    assert run_collection(target, BY_NAME["wal_archiving"], DEFAULTS["wal_archiving"],
                          store).error is None
    target.close()
    text = Exposition(store).get().body.decode()
    assert sample(text, "hiw_wal_archiving_status", status="disabled") == 1
    assert sample(text, "hiw_wal_archive_configured") == 0


def test_the_error_never_leaks_row_values(db):
    config_id = add_backup(db.conn, "nightly")
    add_run(db.conn, config_id, "failed", 1, error_message="student Ann's session leaked")
    assert db.collect().error is None
    text = db.text()
    assert "Ann" not in text
    assert "disk" not in text
    assert sample(text, "hiw_backup_last_run_status", backup_name="nightly",
                  status="failure") == 1


# --- issue 10: a failed poll, NULL names, successes in the future -----------------------


def test_a_failed_poll_keeps_the_last_good_series_until_they_are_stale(db):
    """A transient failure (here lock_timeout: the app holds ACCESS EXCLUSIVE) changes
    nothing a page depends on; only past stale_after do the backups turn unknown."""
    stale = add_backup(db.conn, "stale")
    add_run(db.conn, stale, "completed", 50)
    assert db.collect().error is None
    assert status_of(db.text(), "stale") == "critical"
    holder = db.server.cluster.connect(db.name)
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE backup_execution_log IN ACCESS EXCLUSIVE MODE")
    try:
        failed = db.collect()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert failed.error.code == "lock_timeout"
    assert failed.last_success_at is not None
    fresh = db.text(at=failed.last_success_at + 1)
    assert sample(fresh, "hiw_collector_up", collector="backups") == 0
    assert status_of(fresh, "stale") == "critical"  # what HiwBackupStaleCritical needs
    assert sample(fresh, "hiw_backup_age_seconds", backup_name="stale") == \
        pytest.approx(50 * 3600, abs=60)
    stale_text = db.text(at=db.stale_at())
    assert status_of(stale_text, "stale") == "unknown"
    assert sample(stale_text, "hiw_backup_age_seconds", backup_name="stale") is None
    assert db.collect().error is None
    assert status_of(db.text(), "stale") == "critical"


def test_null_backup_names_are_labelled_and_never_break_metrics(pg):
    database = BackupDb(pg, SEED_SCHEMA.replace("backup_name text NOT NULL", "backup_name text"))
    try:
        c = database.conn
        only = c.execute("INSERT INTO backup_configurations (backup_name) VALUES (NULL) "
                         "RETURNING id").fetchone()[0]
        add_run(c, only, "completed", 2)
        # alone: the one row's series render
        assert database.collect().error is None
        assert status_of(database.text(), f"(unnamed, id {only})") == "healthy"
        # among named backups: every backup is still collected and served
        named = add_backup(c, "nightly")
        add_run(c, named, "completed", 30)
        second = c.execute("INSERT INTO backup_configurations (backup_name, backup_type) "
                           "VALUES (NULL, NULL) RETURNING id").fetchone()[0]
        assert database.collect().error is None
        text = database.text()
        assert status_of(text, "nightly") == "warning"
        assert status_of(text, f"(unnamed, id {only})") == "healthy"
        assert status_of(text, f"(unnamed, id {second})") == "critical"
        assert sample(text, "hiw_backups_configured") == 3
        assert sample(text, "hiw_exposition_dropped_families_total") is None
        # and the unknown fallback covers them too
        c.execute("REVOKE SELECT ON backup_execution_log FROM hiw_monitor")
        assert database.collect().error.code == "permission_denied"
        assert status_of(database.text(at=database.stale_at()),
                         f"(unnamed, id {second})") == "unknown"
    finally:
        database.close()


def test_a_success_that_ends_in_the_future_is_reported_as_such(db):
    skewed, nightly = add_backup(db.conn, "skewed"), add_backup(db.conn, "nightly")
    add_run(db.conn, skewed, "completed", 30)
    add_run(db.conn, skewed, "completed", -3)  # end_time 3 h ahead of the database clock
    add_run(db.conn, nightly, "completed", 2)
    assert db.collect().error is None
    text = db.text()
    assert status_of(text, "skewed") == "future"
    assert status_of(text, "nightly") == "healthy"
    assert sample(text, "hiw_backup_last_success_in_future", backup_name="skewed") == 1
    assert sample(text, "hiw_backup_last_success_in_future", backup_name="nightly") == 0
    assert sample(text, "hiw_backup_age_seconds", backup_name="skewed") == \
        pytest.approx(-3 * 3600, abs=60)  # not clamped to 0
    assert sample(text, "hiw_backup_last_success_timestamp_seconds", backup_name="skewed") > \
        time.time() + 2 * 3600
    assert sample(text, "hiw_backup_newest_success_age_seconds") == \
        pytest.approx(2 * 3600, abs=60)
