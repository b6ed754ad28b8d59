"""bloat, vacuum and indexes collectors against real PostgreSQL 15 and 18.

Each test works in a database of its own inside the shared cluster (``CREATE DATABASE``),
so other tests' data and statistics are untouched, and connects as the real monitoring
role (``hiw_monitor``: pg_monitor, no SELECT on the test tables unless a test grants it).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import psycopg
import pytest
from conftest import Server
from helpers import value, wait_for

from hiw_monitor import collect
from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.config import ConnectionSettings, load
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

pytestmark = pytest.mark.integration
SETTINGS = load(environ={}, require_targets=False).collectors

COLUMN_WIDTHS_SQL = """
CREATE SCHEMA IF NOT EXISTS hiw_monitor;
CREATE OR REPLACE FUNCTION hiw_monitor.column_widths()
RETURNS TABLE (relid oid, attnum smallint, null_frac real, avg_width integer)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT starelid, staattnum, stanullfrac, stawidth
    FROM pg_catalog.pg_statistic
    WHERE NOT stainherit
$$;
REVOKE ALL ON FUNCTION hiw_monitor.column_widths() FROM PUBLIC;
GRANT USAGE ON SCHEMA hiw_monitor TO hiw_monitor;
GRANT EXECUTE ON FUNCTION hiw_monitor.column_widths() TO hiw_monitor;
"""


@dataclass
class Database:
    """A database of the test's own in the shared server."""

    server: Server
    name: str

    def admin(self) -> psycopg.Connection[Any]:
        return self.server.cluster.connect(self.name)

    def run(self, *statements: str) -> None:
        """Run statements in a fresh session that then ends (its statistics are flushed
        when it exits)."""
        with self.admin() as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def collect(self, collector: str, state: Any = None, **options: Any):
        config = replace(self.server.target_config(), conninfo=self.server.monitor_dsn(self.name))
        target = Target(config, ConnectionSettings())
        store = SnapshotStore()
        store.register(target.name, target.redacted, collector, 15, 45)
        base = SETTINGS[collector]
        chosen = replace(base, options=MappingProxyType({**base.options, **options}))
        try:
            return run_collection(target, BY_NAME[collector], chosen, store, state)
        finally:
            target.close()


@pytest.fixture
def db(pg: Server) -> Iterator[Database]:
    name = f"maint_{uuid.uuid4().hex[:10]}"
    pg.cluster.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(pg, name)
    finally:
        # forget this database's statements first: entries of a dropped database would
        # linger in the shared pg_stat_statements for the other tests' collections
        with pg.admin() as conn:
            conn.execute("SELECT pg_stat_statements_reset(0, d.oid, 0)"
                         " FROM pg_database d WHERE d.datname = %s", [name])
        pg.cluster.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def series(sample, name: str) -> dict[tuple[str, ...], float]:
    """{label values except target and datname, in label order: value} of one metric
    (per-database collectors label every series with the database collected)."""
    out = {}
    for family in sample.families:
        for s in family.samples:
            if s.name == name:
                out[tuple(v for k, v in s.labels.items()
                          if k not in ("target", "datname"))] = s.value
    return out



def ok(sample):
    assert sample.error is None, sample.error
    return sample


def eventually(collect, check, timeout: float = 60.0):
    """Collect until ``check(sample)`` holds: a session's statistics reach the shared
    counters a moment after it commits or exits, not at once. ``timeout`` is a hang guard,
    generous for a busy machine."""
    latest: dict[str, Any] = {}

    def attempt() -> bool:
        latest["sample"] = ok(collect())
        try:
            return bool(check(latest["sample"]))
        except AssertionError:
            return False

    wait_for(attempt, timeout=timeout, every=0.3, what="statistics to arrive")
    return latest["sample"]


def make_table(name: str, rows: int = 60_000, extra: str = "") -> str:
    return (f"CREATE TABLE {name} (id int8 PRIMARY KEY, note text, score int4) {extra};"
            f"INSERT INTO {name} SELECT g, md5(g::text) || repeat('x', g % 40), g % 1000"
            f" FROM generate_series(1, {rows}) g")


# A session's row counts reach the shared statistics when it is idle and its last flush is
# a second old; a VACUUM reports its counts at once. Flushing first keeps a quick
# INSERT/DELETE + VACUUM sequence from counting the same rows twice in n_live_tup.
FLUSH = "SELECT pg_stat_force_next_flush()"


# --- bloat ------------------------------------------------------------------------------------


def test_a_bloated_table_is_reported_above_a_fresh_one(db):
    db.run(make_table("fresh"), make_table("bloated"), make_table("hidden"),
           "DELETE FROM bloated WHERE id % 10 < 6", FLUSH,
           "VACUUM ANALYZE fresh", "VACUUM ANALYZE bloated", "VACUUM ANALYZE hidden",
           "GRANT SELECT ON fresh, bloated TO hiw_monitor")
    sample = ok(db.collect("bloat", min_size_bytes=1_000_000))
    tables = series(sample, "hiw_table_bloat_ratio")
    assert tables[("public", "fresh")] < 0.1
    assert tables[("public", "bloated")] > 0.5
    assert ("public", "hidden") not in tables  # no SELECT: widths unknown, not guessed
    assert value(sample, "hiw_bloat_unestimated_relations", kind="table") >= 1
    assert value(sample, "hiw_table_bloat_bytes", table="bloated") > 2_000_000
    indexes = series(sample, "hiw_index_bloat_ratio")
    assert indexes[("public", "bloated", "bloated_pkey")] > 0.5
    assert indexes[("public", "fresh", "fresh_pkey")] < 0.1
    # the primary key is int8 (fixed width): estimated without any grant
    assert ("public", "hidden", "hidden_pkey") in indexes


def test_the_statistics_function_covers_tables_pg_stats_hides(db):
    db.run(make_table("guarded"), "ALTER TABLE guarded ENABLE ROW LEVEL SECURITY",
           "DELETE FROM guarded WHERE id % 10 < 5", FLUSH, "VACUUM ANALYZE guarded",
           "GRANT SELECT ON guarded TO hiw_monitor")  # RLS hides pg_stats even then
    # ... for a role without BYPASSRLS (the demo gives hiw_monitor BYPASSRLS for the
    # review's retention count, which also shows it pg_stats of RLS tables)
    db.run("ALTER ROLE hiw_monitor NOBYPASSRLS")
    try:
        blind = ok(db.collect("bloat", min_size_bytes=1_000_000))
    finally:
        db.run("ALTER ROLE hiw_monitor BYPASSRLS")
    assert ("public", "guarded") not in series(blind, "hiw_table_bloat_ratio")
    missing = db.collect("bloat", min_size_bytes=1_000_000,
                         statistics_function="hiw_monitor.column_widths")
    assert missing.error is not None
    assert missing.error.code == "statistics_function_missing"
    db.run(COLUMN_WIDTHS_SQL)
    seen = ok(db.collect("bloat", min_size_bytes=1_000_000,
                         statistics_function="hiw_monitor.column_widths"))
    assert 0.4 < value(seen, "hiw_table_bloat_ratio", table="guarded") < 0.6


def test_exact_mode_reports_a_missing_extension_then_measures(db):
    db.run(make_table("bloated"), "DELETE FROM bloated WHERE id % 10 < 6", FLUSH,
           "VACUUM ANALYZE bloated", "GRANT SELECT ON bloated TO hiw_monitor")
    state = BY_NAME["bloat"].new_state()
    missing = ok(db.collect("bloat", state, min_size_bytes=1_000_000, exact=True))
    assert value(missing, "hiw_bloat_exact_status", status="extension_missing") == 1
    assert value(missing, "hiw_table_bloat_ratio", table="bloated") > 0.5  # estimates go on
    db.run("CREATE EXTENSION pgstattuple")
    measured = ok(db.collect("bloat", state, min_size_bytes=1_000_000, exact=True))
    assert value(measured, "hiw_bloat_exact_status", status="ok") == 1
    exact = value(measured, "hiw_table_bloat_exact_ratio", table="bloated")
    estimate = value(measured, "hiw_table_bloat_ratio", table="bloated")
    assert abs(exact - estimate) < 0.1
    assert value(measured, "hiw_index_bloat_exact_ratio", index="bloated_pkey") > 0.5
    assert value(measured, "hiw_bloat_exact_pending_relations") == 0


def test_exact_timeout_is_a_hard_limit_and_not_fatal(db):
    """Each pgstattuple call is a probe under its own exact_timeout: one that exceeds it
    is counted, and the rest of the run (the estimates, the next calls) goes on."""
    db.run(make_table("big", rows=200_000), "CREATE EXTENSION pgstattuple",
           "DELETE FROM big WHERE id % 2 = 0")  # no vacuum: pgstattuple_approx reads it all
    state = BY_NAME["bloat"].new_state()
    sample = ok(db.collect("bloat", state, min_size_bytes=1_000_000, exact=True,
                           exact_timeout=0.001, exact_interval=0.0))
    timeouts = value(sample, "hiw_bloat_exact_timeouts_total")
    assert timeouts >= 1
    assert series(sample, "hiw_table_bloat_exact_ratio") == {}
    assert value(sample, "hiw_bloat_exact_status", status="ok") == 1
    assert value(sample, "hiw_bloat_exact_pending_relations") == 0  # every call was made
    assert value(sample, "hiw_bloat_exact_errors_total") == 0
    assert ("public", "big", "big_pkey") in series(sample, "hiw_index_bloat_ratio")
    # the same relations under the default exact_timeout: measured, the count stays
    again = ok(db.collect("bloat", state, min_size_bytes=1_000_000, exact=True,
                          exact_interval=0.0))
    assert 0.3 < value(again, "hiw_table_bloat_exact_ratio", table="big") < 0.7
    assert ("public", "big", "big_pkey") in series(again, "hiw_index_bloat_exact_ratio")
    assert value(again, "hiw_bloat_exact_timeouts_total") == timeouts


@contextlib.contextmanager
def monitoring(db: Database, **connection: float) -> Iterator[Target]:
    """A connection as the monitoring role that stays open across collections."""
    config = replace(db.server.target_config(), conninfo=db.server.monitor_dsn(db.name))
    target = Target(config, ConnectionSettings(**connection))
    try:
        yield target
    finally:
        target.close()


def bloat_on(target: Target, state: Any, settings: Any):
    store = SnapshotStore()
    store.register(target.name, target.redacted, "bloat", 15, 45)
    return ok(run_collection(target, BY_NAME["bloat"], settings, store, state))


def test_exact_mode_follows_the_extension_and_the_grant_while_connected(db, monkeypatch):
    """The plan is made per connection, but while exact mode is on it is made again (here:
    at every run) so that CREATE EXTENSION, REVOKE and GRANT show without a reconnect."""
    monkeypatch.setattr(collect, "REPLAN_SKIPPED_AFTER", 0.0)
    db.run(make_table("bloated"), "DELETE FROM bloated WHERE id % 10 < 6", FLUSH,
           "VACUUM ANALYZE bloated")
    base = SETTINGS["bloat"]
    settings = replace(base, options=MappingProxyType(
        {**base.options, "min_size_bytes": 1_000_000, "exact": True, "exact_interval": 0.0}))
    state = BY_NAME["bloat"].new_state()
    revoke = ("REVOKE EXECUTE ON FUNCTION pgstattuple_approx(regclass)"
              " FROM pg_stat_scan_tables")
    with monitoring(db) as target:
        missing = bloat_on(target, state, settings)
        assert value(missing, "hiw_bloat_exact_status", status="extension_missing") == 1
        db.run("CREATE EXTENSION pgstattuple")
        measured = bloat_on(target, state, settings)
        assert value(measured, "hiw_bloat_exact_status", status="ok") == 1
        assert value(measured, "hiw_table_bloat_exact_ratio", table="bloated") > 0.5
        db.run(revoke)
        denied = bloat_on(target, state, settings)
        assert value(denied, "hiw_bloat_exact_status", status="permission_denied") == 1
        assert value(denied, "hiw_bloat_exact_errors_total") == 0  # no call was tried
        db.run(revoke.replace("REVOKE", "GRANT").replace(" FROM ", " TO "))
        granted = bloat_on(target, state, settings)
        assert value(granted, "hiw_bloat_exact_status", status="ok") == 1


# --- locks ------------------------------------------------------------------------------------


@contextlib.contextmanager
def access_exclusive(db: Database, table: str, waiting: bool) -> Iterator[None]:
    """An ACCESS EXCLUSIVE lock on ``table``: held, or (``waiting``) requested behind a
    reader, which is the case where a plain reader would queue."""
    holder = db.admin()
    blocked = db.admin()
    thread = None
    try:
        if waiting:
            holder.execute("BEGIN")
            holder.execute(f"SELECT count(*) FROM {table}")  # ACCESS SHARE, kept
            thread = threading.Thread(target=lambda: _lock_quietly(blocked, table), daemon=True)
            thread.start()
            wait_for(lambda: _waiting(db, table), what="a waiting lock request")
        else:
            holder.execute("BEGIN")
            holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        holder.execute("ROLLBACK")
        if thread is not None:
            thread.join(timeout=60)
        holder.close()
        blocked.close()


def _lock_quietly(conn: psycopg.Connection[Any], table: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute("BEGIN")
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        conn.execute("ROLLBACK")


def _waiting(db: Database, table: str) -> bool:
    with db.admin() as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE relation = %s::regclass"
                           " AND mode = 'AccessExclusiveLock' AND NOT granted",
                           [table]).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("waiting", [False, True], ids=["held", "awaited"])
def test_locked_relations_are_skipped_never_waited_for(db, waiting):
    db.run(make_table("busy", rows=30_000), make_table("calm", rows=30_000),
           "CREATE INDEX busy_expr ON busy (lower(note)) WHERE score > 10",
           "CREATE INDEX busy_expr_again ON busy (lower(note)) WHERE score > 10", FLUSH,
           "VACUUM ANALYZE busy", "VACUUM ANALYZE calm",
           "GRANT SELECT ON busy, calm TO hiw_monitor")
    with access_exclusive(db, "busy", waiting):
        bloat = ok(db.collect("bloat", min_size_bytes=0))
        indexes = ok(db.collect("indexes"))
        vacuum = ok(db.collect("vacuum"))
    assert ("public", "busy") not in series(bloat, "hiw_table_bloat_ratio")
    assert ("public", "calm") in series(bloat, "hiw_table_bloat_ratio")
    assert value(bloat, "hiw_bloat_locked_relations_skipped") >= 4  # table + 3 indexes
    assert value(indexes, "hiw_indexes_locked_relations_skipped") >= 3
    assert value(indexes, "hiw_duplicate_indexes") == 0  # not compared while locked
    assert ("public", "busy") in series(vacuum, "hiw_table_live_tuples")  # needs no lock
    after = ok(db.collect("indexes"))
    assert value(after, "hiw_index_duplicate_size_bytes", index="busy_expr_again",
                 duplicate_of="busy_expr") > 0


@pytest.mark.parametrize("waiting", [False, True], ids=["held", "awaited"])
def test_exact_mode_never_opens_a_locked_relation(db, waiting):
    """pgstattuple is never called on a relation that holds or awaits ACCESS EXCLUSIVE.
    With a lock_timeout far beyond exact_timeout, a call that opened it would wait and
    be counted as a timeout."""
    db.run(make_table("busy", rows=30_000), make_table("calm", rows=30_000),
           "CREATE EXTENSION pgstattuple", FLUSH, "VACUUM ANALYZE busy", "VACUUM ANALYZE calm")
    base = SETTINGS["bloat"]
    settings = replace(base, options=MappingProxyType(
        {**base.options, "min_size_bytes": 500_000, "exact": True, "exact_top_n": 1000,
         "exact_timeout": 5.0}))
    with access_exclusive(db, "busy", waiting), monitoring(db, lock_timeout=120) as target:
        sample = bloat_on(target, BY_NAME["bloat"].new_state(), settings)
    assert value(sample, "hiw_bloat_exact_timeouts_total") == 0
    assert value(sample, "hiw_bloat_exact_errors_total") == 0
    assert ("public", "calm") in series(sample, "hiw_table_bloat_exact_ratio")
    assert ("public", "calm", "calm_pkey") in series(sample, "hiw_index_bloat_exact_ratio")
    assert ("public", "busy") not in series(sample, "hiw_table_bloat_exact_ratio")
    assert ("public", "busy", "busy_pkey") not in series(sample, "hiw_index_bloat_exact_ratio")
    assert value(sample, "hiw_bloat_locked_relations_skipped") >= 2  # busy, busy_pkey


# --- vacuum -----------------------------------------------------------------------------------


def test_vacuum_lowers_the_dead_tuples_the_agent_reports(db):
    db.run(make_table("churn", rows=10_000, extra="WITH (autovacuum_enabled = false)"),
           "DELETE FROM churn WHERE id <= 4000")
    before = eventually(lambda: db.collect("vacuum"),
                        lambda s: value(s, "hiw_table_dead_tuples", table="churn") == 4000)
    assert value(before, "hiw_table_live_tuples", table="churn") == 6000
    assert value(before, "hiw_table_dead_tuples_ratio", table="churn") == pytest.approx(0.4)
    assert value(before, "hiw_table_autovacuum_vacuum_due", table="churn") == 0  # disabled
    assert value(before, "hiw_vacuum_tables_autovacuum_disabled") == 1
    manual_before = value(before, "hiw_table_vacuums_total", table="churn", kind="manual")
    db.run("VACUUM churn")
    after = ok(db.collect("vacuum"))
    assert value(after, "hiw_table_dead_tuples", table="churn") == 0
    assert value(after, "hiw_table_vacuums_total", table="churn", kind="manual") == \
        manual_before + 1
    assert value(after, "hiw_table_last_vacuum_age_seconds", table="churn", kind="manual") < 60
    assert value(after, "hiw_table_xid_age", table="churn") >= 0
    freeze = value(after, "hiw_autovacuum_freeze_max_age")
    assert value(after, "hiw_table_xid_freeze_ratio", table="churn") == pytest.approx(
        value(after, "hiw_table_xid_age", table="churn") / freeze)


def test_autovacuum_threshold_follows_the_tables_settings(db):
    db.run(make_table("tuned", rows=2_000, extra="WITH (autovacuum_vacuum_threshold = 10,"
                      " autovacuum_vacuum_scale_factor = 0.5, autovacuum_enabled = false)"),
           FLUSH, "ANALYZE tuned", "VACUUM tuned")
    sample = ok(db.collect("vacuum"))
    assert value(sample, "hiw_table_autovacuum_vacuum_threshold", table="tuned") == \
        pytest.approx(10 + 0.5 * 2000)
    assert value(sample, "hiw_table_last_analyze_age_seconds", table="tuned",
                 kind="manual") >= 0


def test_a_running_vacuum_is_reported_with_phase_and_progress(db):
    db.run(make_table("slow", rows=40_000, extra="WITH (autovacuum_enabled = false)"),
           "DELETE FROM slow WHERE id % 2 = 0")
    runner = db.admin()
    pid = runner.info.backend_pid

    def vacuum() -> None:
        with contextlib.suppress(psycopg.Error):  # canceled below
            runner.execute("SET vacuum_cost_delay = 100")
            runner.execute("SET vacuum_cost_limit = 1")
            runner.execute("VACUUM slow")

    thread = threading.Thread(target=vacuum, daemon=True)
    thread.start()
    seen: dict[str, Any] = {}

    def running() -> bool:
        sample = ok(db.collect("vacuum"))
        if value(sample, "hiw_vacuums_in_progress", kind="manual") == 1:
            seen["sample"] = sample
            return True
        return False

    try:
        wait_for(running, every=0.3, what="the VACUUM in pg_stat_progress_vacuum")
    finally:
        with db.admin() as conn:
            conn.execute("SELECT pg_cancel_backend(%s)", [pid])
        thread.join(timeout=60)
        runner.close()
    sample = seen["sample"]
    phases = series(sample, "hiw_vacuum_phase")
    assert sum(phases.values()) == 1
    assert {labels[1] for labels in phases} == {"slow"}
    assert 0 <= value(sample, "hiw_vacuum_progress_ratio", table="slow") <= 1
    assert value(sample, "hiw_vacuum_heap_blocks", table="slow", state="total") > 0
    assert value(sample, "hiw_vacuums_in_progress", kind="autovacuum") == 0
    done = ok(db.collect("vacuum"))
    assert series(done, "hiw_vacuum_phase") == {}


# --- indexes ----------------------------------------------------------------------------------


EXPECTED = {"idx_jobs_pending": {"table": "jobs"}, "idx_jobs_missing": {"table": "jobs"}}


def expected_option(raw: dict[str, dict[str, str]]):
    from hiw_monitor.collectors.indexes import parse_expected

    return parse_expected(raw)


def test_a_dropped_expected_index_flips_to_absent(db):
    db.run("CREATE TABLE jobs (id int PRIMARY KEY, priority int, status text)",
           "INSERT INTO jobs SELECT g, g % 10, 'pending' FROM generate_series(1, 1000) g",
           "CREATE INDEX idx_jobs_pending ON jobs (priority) WHERE status = 'pending'")
    expected = expected_option(EXPECTED)
    present = ok(db.collect("indexes", expected=expected))
    assert value(present, "hiw_expected_index_present", index="idx_jobs_pending",
                 table="jobs", schema="public") == 1
    assert value(present, "hiw_expected_index_valid", index="idx_jobs_pending") == 1
    assert value(present, "hiw_expected_index_present", index="idx_jobs_missing") == 0
    db.run("DROP INDEX idx_jobs_pending")
    dropped = ok(db.collect("indexes", expected=expected))
    assert value(dropped, "hiw_expected_index_present", index="idx_jobs_pending") == 0
    assert value(dropped, "hiw_expected_index_valid", index="idx_jobs_pending") == 0
    # a failed CREATE INDEX CONCURRENTLY leaves it present but invalid
    with contextlib.suppress(psycopg.errors.UniqueViolation):
        db.run("CREATE UNIQUE INDEX CONCURRENTLY idx_jobs_pending ON jobs (priority)")
    invalid = ok(db.collect("indexes", expected=expected))
    assert value(invalid, "hiw_expected_index_present", index="idx_jobs_pending") == 1
    assert value(invalid, "hiw_expected_index_valid", index="idx_jobs_pending") == 0
    assert value(invalid, "hiw_index_invalid", index="idx_jobs_pending") == 1
    assert value(invalid, "hiw_invalid_indexes") == 1


def test_the_default_expected_indexes_on_the_hiw_schema(pg):
    target = pg.target()
    store = SnapshotStore()
    store.register(target.name, target.redacted, "indexes", 15, 45)
    sample = ok(run_collection(target, BY_NAME["indexes"], SETTINGS["indexes"], store))
    target.close()
    present = {labels[2]: v for labels, v in series(sample, "hiw_expected_index_present").items()}
    assert set(present) == {"idx_classrooms_active_facilitator", "idx_student_sessions_active",
                            "idx_student_progress_analytics", "idx_job_queue_pending"}
    assert present["idx_classrooms_active_facilitator"] == 1.0  # the one the schema creates


def test_unused_and_duplicate_indexes_are_listed(db):
    db.run("CREATE TABLE items (id int PRIMARY KEY, a int, b int)",
           "INSERT INTO items SELECT g, g % 100, g % 7 FROM generate_series(1, 20000) g",
           "CREATE INDEX items_a ON items (a)", "CREATE INDEX items_b ON items (b)",
           "CREATE INDEX items_a_again ON items (a)", "ANALYZE items")
    with db.admin() as conn:  # scans items_a (or its twin), never items_b
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        for _ in range(3):
            conn.execute("SELECT count(*) FROM items WHERE a = 5").fetchone()
    sample = eventually(lambda: db.collect("indexes"), lambda s: len(series(
        s, "hiw_index_unused_size_bytes")) == 2)
    unused = {labels[2] for labels in series(sample, "hiw_index_unused_size_bytes")}
    assert "items_b" in unused
    assert "items_pkey" not in unused  # enforces a constraint
    assert {"items_a", "items_a_again"} - unused  # the scanned one is not listed
    assert value(sample, "hiw_index_unused_size_bytes", index="items_b") > 0
    assert value(sample, "hiw_index_duplicate_size_bytes", index="items_a_again",
                 duplicate_of="items_a") > 0
    assert value(sample, "hiw_duplicate_indexes") == 1


def test_heavy_sequential_scans_are_listed(db):
    db.run(make_table("scanned", rows=12_000), "ANALYZE scanned")
    with db.admin() as conn:
        for _ in range(5):
            conn.execute("SELECT count(*) FROM scanned WHERE score = 3").fetchone()
    sample = eventually(
        lambda: db.collect("indexes", seq_scan_min_rows=10_000, seq_scan_min_scans=5),
        lambda s: value(s, "hiw_table_seq_scans_total", table="scanned") >= 5)
    assert value(sample, "hiw_table_seq_scans_total", table="scanned") >= 5
    assert value(sample, "hiw_table_seq_scan_rows_read_total", table="scanned") >= 60_000
    assert value(sample, "hiw_seq_scan_heavy_tables") == 1
    quiet = ok(db.collect("indexes", seq_scan_min_rows=10_000, seq_scan_min_scans=1000))
    assert series(quiet, "hiw_table_seq_scans_total") == {}


# --- cardinality ------------------------------------------------------------------------------


def test_per_relation_series_respect_the_configured_limits(db):
    statements = [
        f"CREATE TABLE t{i:02d} (id int8 PRIMARY KEY, v int4, w int4) "
        "WITH (autovacuum_enabled = false);"
        f"CREATE INDEX t{i:02d}_v ON t{i:02d} (v);"
        f"INSERT INTO t{i:02d} SELECT g, g, g FROM generate_series(1, {200 + i * 20}) g;"
        f"DELETE FROM t{i:02d} WHERE id <= {i * 10};"
        f"ANALYZE t{i:02d}"
        for i in range(30)]
    db.run(*statements)
    vacuum = eventually(lambda: db.collect("vacuum", top_n=5, top_n_by_age=2),
                        lambda s: value(s, "hiw_vacuum_dead_tuples") == 4350)
    tables = series(vacuum, "hiw_table_dead_tuples")
    assert len(tables) <= 7
    assert set(tables) >= {("public", f"t{i}") for i in range(25, 30)}  # the most dead rows
    assert value(vacuum, "hiw_vacuum_tables", set="all") == 30
    bloat = ok(db.collect("bloat", min_size_bytes=0, top_n=3))
    assert len(series(bloat, "hiw_table_bloat_ratio")) == 3
    assert len(series(bloat, "hiw_index_bloat_ratio")) == 3
    assert value(bloat, "hiw_bloat_estimated_relations", kind="table") >= 30
    indexes = ok(db.collect("indexes", top_n=4))
    assert len(series(indexes, "hiw_index_unused_size_bytes")) == 4
    assert value(indexes, "hiw_unused_indexes") == 30
    default_bloat = ok(db.collect("bloat"))  # 10 MiB threshold: none of these
    assert series(default_bloat, "hiw_table_bloat_ratio") == {}
