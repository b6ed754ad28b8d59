"""The review's checks evaluated from the other collectors' results (hiw_monitor/health.py),
each on a real PostgreSQL where it passes and one where it fails (or warns), the health
score's arithmetic, and the agent's ``/metrics`` and ``/health`` (issue 13).

- The shared ``pg`` server (15 and 18) shows the demo as loaded: backups with a critical
  and a never-succeeded configuration, archiving off, three of the four expected indexes
  missing, no PgBouncer. What a test changes it changes in a HiW database of its own in
  that cluster (:func:`fresh`), dropped afterwards.
- A server of this module's own (:func:`own`, PostgreSQL 15) has what the shared one must
  not: archive_mode on with archive_command '/bin/true', autovacuum off, max_connections
  20 and no pg_stat_statements in shared_preload_libraries. Tests that change it put it
  back.
- A streaming pair (tests/replication.py) for replication_healthy, and a real PgBouncer
  (tests/pgbouncer.py) for connection_pooling.

Collections run when a test says so (``Agent.run_one``, ``Agent.collect_all_once``), every
collector with an hour between scheduled runs, so no result goes stale during a test and no
verdict depends on how long a test takes; every wait is a bounded poll (helpers.wait_for);
where the availability window matters, the Health's clock is the test's.

Four tests describe what health.py does not do yet (each docstring says what and why):
``test_backup_rto_does_not_call_a_failed_fast_restore_slower_than_the_rto``,
``test_availability_is_unknown_before_the_first_collection``,
``test_availability_does_not_count_the_time_before_a_targets_first_collection_as_down``
and ``test_replication_healthy_is_unknown_while_its_collector_cannot_read``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import yaml
from conftest import HIW_DB, MONITOR_PASSWORD, Server, start_server
from helpers import http_get, running_agent, wait_for
from pgbouncer import MONITOR_PASSWORD as PGB_PASSWORD
from pgbouncer import Bouncer
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from replication import Topology

from hiw_monitor.collectors import BY_NAME
from hiw_monitor.config import Config, Overrides, load
from hiw_monitor.health import TargetHealth
from hiw_monitor.review.checks import BY_ID, METRIC_CHECKS
from hiw_monitor.review.model import COMPONENTS, Finding
from hiw_monitor.scheduler import Agent

pytestmark = pytest.mark.integration

_files = itertools.count()
# the demo's expected indexes (indexes collector default): one present, three missing
MISSING = ("idx_job_queue_pending", "idx_student_progress_analytics",
           "idx_student_sessions_active")
ROUNDING = 0.0005  # each points-lost value and the score are rounded to 3 decimals


def monitor_dsn(server: Server, dbname: str = HIW_DB) -> str:
    return server.cluster.dsn(dbname, user="hiw_monitor", password=MONITOR_PASSWORD)


def make_config(tmp_path, targets: dict[str, str] | list[dict[str, Any]],
                **collectors: dict[str, Any]) -> Config:
    """A config file with ``targets`` (name -> DSN, or full entries) and every collector
    at an hour's interval plus the given per-collector settings (``review={...}`` for the
    health checks' options)."""
    entries = [{"name": name, "dsn": dsn} for name, dsn in targets.items()] \
        if isinstance(targets, dict) else targets
    settings: dict[str, dict[str, Any]] = {name: {"interval": "1h"} for name in BY_NAME}
    for name, options in collectors.items():
        settings[name] = {**settings[name], **options}
    path = tmp_path / f"hiw-health-{next(_files)}.yaml"
    path.write_text(yaml.safe_dump({"targets": entries, "collectors": settings}))
    return load(Overrides(config=str(path)), environ={})


class Watch:
    """An agent that is not started: its collections run when the test says so, and its
    Health is read after them (the store feeds ``health.observe`` as in the agent)."""

    def __init__(self, config: Config) -> None:
        self.agent = Agent(config)
        self.targets = {t.name: t for t in self.agent.targets}

    def collect(self, *collectors: str, target: str | None = None) -> None:
        """One run of each collector named (of every one when none is named)."""
        for t in self.targets.values():
            if target is not None and t.name != target:
                continue
            names = collectors or [c.name for c in self.agent.collectors_of(t)]
            for name in names:
                self.agent.run_one(t, name)

    def report(self, target: str | None = None) -> TargetHealth:
        reports = self.agent.health.report()
        if target is None:
            assert len(reports) == 1, [r.target for r in reports]
            return reports[0]
        (found,) = [r for r in reports if r.target == target]
        return found

    def finding(self, check: str, target: str | None = None) -> Finding:
        found = [f for f in self.report(target).findings if f.check.id == check]
        assert len(found) == 1, (check, found)
        return found[0]

    def close(self) -> None:
        for t in self.agent.targets:
            t.close()


@pytest.fixture
def watch() -> Iterator[Any]:
    """``watch(config)``: a :class:`Watch`, closed after the test."""
    made: list[Watch] = []

    def make(config: Config) -> Watch:
        made.append(Watch(config))
        return made[-1]

    yield make
    for w in made:
        w.close()


def shared(tmp_path, watch, pg: Server, **collectors: dict[str, Any]) -> Watch:
    """A Watch on the shared server's demo database."""
    return watch(make_config(tmp_path, {pg.version: monitor_dsn(pg)}, **collectors))


@contextlib.contextmanager
def fresh_database(server: Server) -> Iterator[str]:
    """A HiW demo database of the test's own in ``server``'s cluster, free to change."""
    name = f"hiw_health_{uuid.uuid4().hex[:10]}"
    server.cluster.create_hiw_database(dbname=name, monitor_password=MONITOR_PASSWORD)
    try:
        yield name
    finally:
        # forget its statements: entries of a dropped database would linger in the
        # shared pg_stat_statements for the other tests' collections
        with server.admin() as conn, contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_stat_statements_reset(0, d.oid, 0)"
                         " FROM pg_database d WHERE d.datname = %s", [name])
        server.cluster.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh(pg: Server) -> Iterator[str]:
    with fresh_database(pg) as name:
        yield name


def on_fresh(tmp_path, watch, pg: Server, dbname: str, **collectors: dict[str, Any]) -> Watch:
    return watch(make_config(tmp_path, {pg.version: monitor_dsn(pg, dbname)}, **collectors))


@pytest.fixture(scope="module")
def own() -> Iterator[Server]:
    """This module's own PostgreSQL 15: archiving to /bin/true, autovacuum off,
    max_connections 20, pg_stat_statements installed but not preloaded."""
    server = start_server("pg15", settings={
        "archive_mode": "on", "archive_command": "'/bin/true'", "autovacuum": "off",
        "max_connections": "20", "shared_preload_libraries": "''"})
    yield server
    server.cluster.destroy()


def assert_points_add_up(health: TargetHealth) -> None:
    """The points lost add up to 10 - score (each rounded to 3 decimals)."""
    assert health.score.value is not None
    losses = health.score.losses
    total = sum(loss.points for loss in losses)
    assert math.isclose(total, 10 - health.score.value, abs_tol=ROUNDING * (len(losses) + 1))
    for f in health.findings:
        lost = health.score.lost(f.check.id)
        if f.status == "pass" or f.status == "unknown":
            assert lost == 0, (f.check.id, f.status, lost)
        else:
            assert lost > 0, (f.check.id, f.status, lost)


# --- backups -------------------------------------------------------------------------------

def run_now(conn, backup: str, **extra: Any) -> None:
    """A completed run of ``backup`` that ended a moment ago."""
    columns = ", ".join(["backup_config_id", "status", "start_time", "end_time",
                         "backup_size_bytes", *extra])
    values = ", ".join(["c.id", "'completed'", "now() - interval '10 minutes'", "now()",
                        "1000000", *["%s"] * len(extra)])
    conn.execute(f"INSERT INTO backup_execution_log ({columns}) SELECT {values} "
                 "FROM backup_configurations c WHERE c.backup_name = %s",
                 [*extra.values(), backup])


def backup_names(conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT backup_name FROM backup_configurations ORDER BY 1").fetchall()]


def test_backup_freshness_fails_on_the_demo_naming_the_unhealthy_backups(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("backups")
    f = w.finding("backup_freshness")
    assert f.status == "fail"
    assert f.reason.startswith("3 of 5 backups not healthy")
    for part in ("offsite_copy: critical", "wal_archive: critical", "weekly_archive: warning"):
        assert part in f.reason
    assert "nightly_full" not in f.reason
    assert "hourly_incremental" not in f.reason
    assert f.measured == {"backups": 5, "unhealthy": 3}


def test_backup_freshness_passes_when_every_backup_just_succeeded(pg, fresh, tmp_path, watch):
    with pg.admin(fresh) as conn:
        for name in backup_names(conn):
            run_now(conn, name)
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect("backups")
    f = w.finding("backup_freshness")
    assert (f.status, f.reason) == ("pass", "all 5 backups healthy")
    assert f.measured == {"backups": 5, "unhealthy": 0}


def test_backup_freshness_warns_with_one_backup_past_its_warning_threshold(
        pg, fresh, tmp_path, watch):
    with pg.admin(fresh) as conn:
        for name in backup_names(conn):
            if name != "weekly_archive":  # its last success stays ~30 h old
                run_now(conn, name)
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect("backups")
    f = w.finding("backup_freshness")
    assert f.status == "warn"
    assert f.reason == ("1 of 5 backups past the warning threshold "
                        "(weekly_archive: warning)")


def test_backup_verification_passes_on_the_demo(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("backups")
    f = w.finding("backup_verification")
    assert f.status == "pass"
    assert f.reason.startswith("nightly_full restored successfully ")
    assert f.reason.endswith(" ago")
    # the demo's newest verified restore ended ~6 h before the database was loaded
    assert 5 * 3600 < f.measured["age_seconds"] <= 7 * 86400


def test_backup_verification_fails_when_the_newest_restore_test_failed(
        pg, fresh, tmp_path, watch):
    with pg.admin(fresh) as conn:
        run_now(conn, "nightly_full", verified_restore=False, restore_duration_seconds=1800)
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect("backups")
    f = w.finding("backup_verification")
    assert f.status == "fail"
    assert f.reason == ("the newest restore test failed for nightly_full: that backup "
                        "cannot be restored")
    assert f.measured == {"failed": 1}


def test_backup_verification_fails_without_a_restore_test_within_the_period(
        pg, tmp_path, watch):
    # the demo's newest successful restore test is ~6 h old: older than a 1 h period
    w = shared(tmp_path, watch, pg, review={"restore_test_period": "1h"})
    w.collect("backups")
    f = w.finding("backup_verification")
    assert f.status == "fail"
    assert f.reason.startswith("no successful restore test in the last 1h (newest: ")
    assert f.measured["age_seconds"] > 3600


def test_backup_rto_passes_on_the_demo(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("backups")
    f = w.finding("backup_rto")
    assert f.status == "pass"
    assert f.reason.startswith("every verified restore within 2h (longest ")
    # nightly_full's restore test: 2940-3060 s (schema.sql 5a)
    assert 2940 <= f.measured["longest_seconds"] <= 3060


def test_backup_rto_fails_with_a_three_hour_restore(pg, fresh, tmp_path, watch):
    with pg.admin(fresh) as conn:
        run_now(conn, "nightly_full", verified_restore=True, restore_duration_seconds=10800)
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect("backups")
    f = w.finding("backup_rto")
    assert (f.status, f.reason) == ("fail", "restores slower than 2h: nightly_full (3h)")
    # the restore itself succeeded: backup_verification is not what fails
    assert w.finding("backup_verification").status == "pass"


def test_backup_rto_does_not_call_a_failed_fast_restore_slower_than_the_rto(
        pg, fresh, tmp_path, watch):
    """A restore test that failed after 30 min did not take longer than the 2 h RTO:
    backup_verification fails it ("cannot be restored"); backup_rto must not report it as
    a restore slower than 2 h."""
    with pg.admin(fresh) as conn:
        run_now(conn, "nightly_full", verified_restore=False, restore_duration_seconds=1800)
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect("backups")
    assert w.finding("backup_verification").status == "fail"
    f = w.finding("backup_rto")
    # the only restore test took 30 min: any "slower than 2h" is false
    assert "slower than" not in f.reason, (f.status, f.reason)


# --- WAL archiving ---------------------------------------------------------------------------

def switch_wal(server: Server) -> None:
    """Write some WAL and switch to a new segment, so the archiver has one to archive."""
    with server.admin() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wal_filler (n int)")
        conn.execute("INSERT INTO wal_filler SELECT generate_series(1, 1000)")
        conn.execute("SELECT pg_switch_wal()")


def test_wal_archiving_fails_where_archive_mode_is_off(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("wal_archiving")
    f = w.finding("wal_archiving_enabled")
    assert f.status == "fail"
    assert f.reason.startswith("WAL archiving is off")
    assert "no point-in-time recovery" in f.reason


def test_wal_archiving_passes_once_a_segment_is_archived(own, tmp_path, watch):
    w = watch(make_config(tmp_path, {"own": monitor_dsn(own)}))

    def archived() -> bool:
        switch_wal(own)
        w.collect("wal_archiving")
        return w.finding("wal_archiving_enabled").status == "pass" and \
            "never" not in w.finding("wal_archiving_enabled").reason

    wait_for(archived, timeout=120, every=1, what="a WAL segment archived")
    assert w.finding("wal_archiving_enabled").reason.startswith("archiving; last WAL archived ")
    assert w.finding("wal_archiving_enabled").reason.endswith(" ago")


def test_wal_archiving_fails_while_archive_command_fails(own, tmp_path, watch):
    w = watch(make_config(tmp_path, {"own": monitor_dsn(own)}))
    with own.admin() as conn:
        conn.execute("ALTER SYSTEM SET archive_command = '/bin/false'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        def failing() -> bool:
            switch_wal(own)
            w.collect("wal_archiving")
            return w.finding("wal_archiving_enabled").status == "fail"

        wait_for(failing, timeout=120, every=1, what="a failed archive_command")
        f = w.finding("wal_archiving_enabled")
        assert f.reason.startswith("archive_command is failing")
        assert "point-in-time recovery has a gap" in f.reason
    finally:
        with own.admin() as conn:
            conn.execute("ALTER SYSTEM RESET archive_command")
            conn.execute("SELECT pg_reload_conf()")


# --- availability ----------------------------------------------------------------------------

def fake_clock(w: Watch) -> list[float]:
    """The Health's clock, set by the test (``clock[0]``): its availability window
    counts exactly the seconds the test says, however long the test takes."""
    clock = [time.time()]
    w.agent.health.clock = lambda: clock[0]
    return clock


def test_availability_passes_while_the_target_is_up(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    clock = fake_clock(w)
    w.collect("connections")
    clock[0] += 30
    w.collect("database")  # a second recorded run, 30 s later
    f = w.finding("availability")
    assert f.status == "pass"
    assert f.measured["ratio"] == 1.0
    assert f.reason == "up 100.000% of the agent's last 30s (SLA 99.95%)"
    assert w.report().up


def test_availability_is_unknown_before_the_first_collection(pg, tmp_path, watch):
    """Before its first collection the agent has not tried the target: its availability
    is not measured (unknown, docs/review.md), not "down" (a critical failure in /health
    and hiw_review_check_status, and a score of 2.0, in the agent's first seconds)."""
    w = shared(tmp_path, watch, pg)
    f = w.finding("availability")
    assert f.status == "unknown", (f.status, f.reason)


def test_availability_does_not_count_the_time_before_a_targets_first_collection_as_down(
        pg, tmp_path, watch):
    """Two targets, both up all along; the second one's first collection comes a minute
    after the first one's (the agent spreads first runs over 2 s; a slow connect takes
    longer). The minute before it was tried is not downtime: the second target was never
    seen down, so its availability passes at 100 %. The Health's clock is the test's."""
    dsn = monitor_dsn(pg)
    w = watch(make_config(tmp_path, {"first": dsn, "second": dsn}))
    clock = fake_clock(w)
    w.collect("connections", target="first")
    clock[0] += 60
    w.collect("connections", target="second")
    clock[0] += 60
    w.collect("connections", target="first")
    assert w.report("second").up
    first = w.finding("availability", "first")
    assert (first.status, first.measured["ratio"]) == ("pass", 1.0)
    second = w.finding("availability", "second")
    assert (second.status, second.measured["ratio"]) == ("pass", 1.0), second.reason


def test_availability_fails_when_the_server_stops(own, tmp_path, watch):
    w = watch(make_config(tmp_path, {"own": monitor_dsn(own)}))
    w.collect()
    before = w.report()
    assert before.up
    assert w.finding("availability").status == "pass"
    own.cluster.stop("fast")
    try:
        w.collect("connections")
        after = w.report()
    finally:
        own.cluster.start()
        own.cluster.wait_ready()
    assert not after.up
    (f,) = [x for x in after.findings if x.check.id == "availability"]
    assert f.status == "fail"
    assert f.reason.startswith("the database is down for the agent: ")
    # the other checks keep their last results (not stale yet): only availability moved
    assert {x.check.id: x.status for x in after.findings if x.check.id != "availability"} \
        == {x.check.id: x.status for x in before.findings if x.check.id != "availability"}
    component = {c.name: c.score for c in after.score.components}
    assert component["availability"] == 0
    assert {c.name: c.score for c in before.score.components}["availability"] == 10
    assert after.score.value is not None
    assert before.score.value is not None
    assert math.isclose(before.score.value - after.score.value, after.score.lost("availability"),
                        abs_tol=3 * ROUNDING)
    assert_points_add_up(after)


def test_availability_warns_after_an_outage_below_the_sla(own, tmp_path, watch):
    """Up again, but down for half of the agent's window: under the 99.95 % SLA. The
    Health's clock is the test's, so the window's shares are exact."""
    w = watch(make_config(tmp_path, {"own": monitor_dsn(own)}))
    clock = fake_clock(w)
    w.collect("connections")  # up at start
    clock[0] += 600
    own.cluster.stop("fast")
    try:
        w.collect("connections")  # down at +10 min: up until then
    finally:
        own.cluster.start()
        own.cluster.wait_ready()
    assert w.finding("availability").status == "fail"
    clock[0] += 600
    w.collect("connections")  # up again at +20 min: down from +10 min
    f = w.finding("availability")
    assert f.status == "warn"
    assert f.measured["ratio"] == 0.5
    assert f.reason == "up 50.000% of the agent's last 20m (SLA 99.95%)"
    health = w.report()
    assert {c.name: c.score for c in health.score.components}["availability"] == 5


# --- latency and pg_stat_statements ------------------------------------------------------

STATEMENTS = {"window": "1h"}  # the two polls' interval stays in the window however slow


def test_latency_sla_passes_for_a_fast_workload(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg, statements=STATEMENTS)
    with pg.admin() as conn:
        w.collect("statements")
        first = w.finding("latency_sla")
        assert first.status == "unknown"
        assert "two polls" in first.reason
        for n in range(200):
            conn.execute("SELECT count(*) FROM generate_series(1, %s)", [n % 10 + 1])
        w.collect("statements")
    f = w.finding("latency_sla")
    assert f.status == "pass", f.reason
    assert f.reason.startswith("p95 ")
    assert f.reason.endswith(" ms (SLA < 100 ms)")
    assert f.measured["seconds"] < 0.1


def test_latency_sla_fails_for_a_slow_workload(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg, statements=STATEMENTS)
    with pg.admin() as conn:
        w.collect("statements")
        for _ in range(10):
            conn.execute("SELECT pg_sleep(0.2)")
        w.collect("statements")
    f = w.finding("latency_sla")
    assert f.status == "fail", f.reason
    assert f.reason.startswith("p95 ")
    assert f.reason.endswith(" ms (SLA < 100 ms)")
    # every call slept 200 ms: the p95 is there or a little above (never below 100 ms)
    assert f.measured["seconds"] > 0.15
    assert float(f.reason.split()[1]) > 150


def test_pg_stat_statements_loaded_passes_where_preloaded_and_installed(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("statements")
    f = w.finding("pg_stat_statements_loaded")
    assert (f.status, f.reason) == ("pass", "pg_stat_statements is preloaded and installed")


def test_pg_stat_statements_loaded_fails_without_the_extension(pg, fresh, tmp_path, watch):
    with pg.admin(fresh) as conn:
        conn.execute("DROP EXTENSION pg_stat_statements")
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect("statements")
    f = w.finding("pg_stat_statements_loaded")
    assert f.status == "fail"
    assert f"not installed in database '{fresh}'" in f.reason
    assert "CREATE EXTENSION pg_stat_statements;" in f.reason
    assert "CREATE EXTENSION pg_stat_statements;" in f.check.remediation
    assert w.finding("latency_sla").status == "unknown"


def test_pg_stat_statements_loaded_fails_when_not_preloaded(own, tmp_path, watch):
    w = watch(make_config(tmp_path, {"own": monitor_dsn(own)}))
    w.collect("statements")
    f = w.finding("pg_stat_statements_loaded")
    assert f.status == "fail"
    assert "pg_stat_statements is not in shared_preload_libraries" in f.reason
    assert "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" in f.reason


# --- expected indexes ----------------------------------------------------------------------

def create_missing_indexes(conn) -> None:
    """The check's own remediation, without CONCURRENTLY (a test may wait for locks)."""
    remediation = BY_ID["expected_indexes"].remediation
    conn.execute(remediation.replace("CREATE INDEX CONCURRENTLY",
                                     "CREATE INDEX IF NOT EXISTS"))


def test_expected_indexes_fail_on_the_demo_naming_the_three_missing(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("indexes")
    f = w.finding("expected_indexes")
    assert f.status == "fail"
    assert f.reason == "3 of 4 expected indexes: missing: " + ", ".join(MISSING)
    assert f.measured == {"missing": 3, "invalid": 0}


def test_expected_indexes_fail_naming_an_invalid_index(pg, fresh, tmp_path, watch):
    """A CREATE INDEX CONCURRENTLY that failed leaves an invalid index of that name."""
    with pg.admin(fresh) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_job_queue_pending "
                     "ON public.job_queue (status)")  # 100 pending jobs: duplicates
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect("indexes")
    f = w.finding("expected_indexes")
    assert f.status == "fail"
    assert f.reason == ("3 of 4 expected indexes: missing: idx_student_progress_analytics, "
                        "idx_student_sessions_active; invalid (a failed CREATE INDEX "
                        "CONCURRENTLY; drop and create again): idx_job_queue_pending")
    assert f.measured == {"missing": 2, "invalid": 1}


def test_expected_indexes_pass_once_created_and_the_score_rises_by_the_points_lost(
        pg, fresh, tmp_path, watch):
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect()
    before = w.report()
    assert w.finding("expected_indexes").status == "fail"
    lost = before.score.lost("expected_indexes")
    assert lost > 0
    assert_points_add_up(before)
    with pg.admin(fresh) as conn:
        create_missing_indexes(conn)
    w.collect("indexes")
    after = w.report()
    f = w.finding("expected_indexes")
    assert (f.status, f.reason) == ("pass", "all 4 expected indexes present and valid")
    assert after.score.lost("expected_indexes") == 0
    assert before.score.value is not None
    assert after.score.value is not None
    assert math.isclose(after.score.value - before.score.value, lost, abs_tol=3 * ROUNDING)
    # nothing else moved
    assert {x.check.id: x.status for x in after.findings if x.check.id != "expected_indexes"} \
        == {x.check.id: x.status for x in before.findings if x.check.id != "expected_indexes"}
    assert_points_add_up(after)


# --- connections -----------------------------------------------------------------------------

def client_backends(conn) -> int:
    return int(conn.execute("SELECT count(*) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend'").fetchone()[0])


@contextlib.contextmanager
def holding(server: Server, count: int) -> Iterator[None]:
    """``count`` idle client connections (superuser, so the reserved slots are theirs)
    and no other client backend; the agent's own connection comes on top."""
    conns = [server.admin("postgres")]
    try:
        # backends of earlier tests leave pg_stat_activity a moment after they closed
        wait_for(lambda: client_backends(conns[0]) == 1, what="no other client backend")
        conns.extend(server.admin("postgres") for _ in range(count - 1))
        wait_for(lambda: client_backends(conns[0]) == count, what=f"{count} client backends")
        yield
    finally:
        for conn in conns:
            conn.close()


def test_connection_headroom_passes_with_low_use(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("connections")
    f = w.finding("connection_headroom")
    assert f.status == "pass"
    assert f.measured["peak_ratio"] < 0.6
    assert "of max_connections (50)" in f.reason
    assert f.reason.endswith("baseline 60%")


@pytest.mark.parametrize(("held", "status"), [(13, "warn"), (16, "fail")])
def test_connection_headroom_warns_then_fails_as_connections_fill_up(
        own, tmp_path, watch, held, status):
    """max_connections 20: 13 held + the agent is 70 % (over the 60 % baseline, within the
    80 % limit), 16 held + the agent 85 % (over the limit)."""
    w = watch(make_config(tmp_path, {"own": monitor_dsn(own)}))
    with holding(own, held):
        w.collect("connections")
    f = w.finding("connection_headroom")
    assert f.status == status, f.reason
    assert math.isclose(f.measured["peak_ratio"], (held + 1) / 20)
    assert f.reason.startswith(f"peak {(held + 1) * 5}% of max_connections (20) over the "
                               "agent's last 1d")
    # the peak is kept: fewer connections now leave the check where the peak put it
    w.collect("connections")
    assert w.finding("connection_headroom").status == status
    assert w.finding("connection_headroom").measured["peak_ratio"] == f.measured["peak_ratio"]


def test_connection_pooling_warns_without_a_pgbouncer_target(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    f = w.finding("connection_pooling")
    assert f.status == "warn"
    assert f.reason.startswith("no PgBouncer target in this agent's config")


def test_connection_pooling_passes_with_a_pgbouncer_target(pg, tmp_path, watch):
    with Bouncer.start("pgb118", pg.cluster.port) as bouncer:
        w = watch(make_config(tmp_path, [
            {"name": "db", "dsn": monitor_dsn(pg)},
            {"name": "pool", "type": "pgbouncer",
             "dsn": f"{bouncer.dsn()} password={PGB_PASSWORD}"}]))
        w.collect()
        pool = w.agent.store.view()[2]
        assert any(s.target == "pool" and s.collector == "pgbouncer" and s.ok for s in pool)
        # the PgBouncer target has no health of its own: it is the PostgreSQL one's pool
        assert [r.target for r in w.agent.health.report()] == ["db"]
        f = w.finding("connection_pooling")
    assert (f.status, f.reason) == ("pass", "a PgBouncer target is watched by this agent")


# --- maintenance -----------------------------------------------------------------------------

def test_autovacuum_enabled_passes_on_the_demo(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("vacuum")
    f = w.finding("autovacuum_enabled")
    assert (f.status, f.reason) == ("pass", "autovacuum on, for every table")


def test_autovacuum_enabled_warns_for_a_table_with_it_off(pg, fresh, tmp_path, watch):
    with pg.admin(fresh) as conn:
        conn.execute("ALTER TABLE public.student_progress SET (autovacuum_enabled = false)")
    w = on_fresh(tmp_path, watch, pg, fresh)
    w.collect("vacuum")
    f = w.finding("autovacuum_enabled")
    assert (f.status, f.reason) == ("warn", "1 table(s) with autovacuum_enabled = false")


def test_autovacuum_enabled_fails_where_autovacuum_is_off(own, tmp_path, watch):
    w = watch(make_config(tmp_path, {"own": monitor_dsn(own)}))
    w.collect("vacuum")
    f = w.finding("autovacuum_enabled")
    assert (f.status, f.reason) == ("fail", "autovacuum (or track_counts) is off")


def test_xid_wraparound_passes_far_from_wraparound(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect("database")
    f = w.finding("xid_wraparound")
    assert f.status == "pass"
    assert 0 < f.measured["ratio"] < 0.5
    assert "of the way to wraparound (database " in f.reason


@pytest.mark.parametrize(("thresholds", "status"), [
    ({"xid_warn": 1e-9, "xid_fail": 1.0}, "warn"),
    ({"xid_warn": 0.0, "xid_fail": 1e-9}, "fail"),
])
def test_xid_wraparound_follows_its_thresholds(pg, tmp_path, watch, thresholds, status):
    """The thresholds are options: set below the server's real XID age (a few thousand
    transactions of 2^31), the same measurement warns or fails."""
    w = shared(tmp_path, watch, pg, review=thresholds)
    w.collect("database")
    f = w.finding("xid_wraparound")
    assert f.status == status
    assert f.measured["ratio"] > 1e-9
    assert "of the way to wraparound (database " in f.reason


BLOAT = {"min_size_bytes": 0}  # the bloat collector estimates every table


def make_bloated_table(conn) -> None:
    """A table of fixed-width columns (the monitoring role's estimate needs no pg_stats
    access for them) with 9 rows in 10 deleted, spread over every page, and fresh
    statistics."""
    conn.execute("CREATE TABLE public.bloated (id bigint, a bigint, b bigint)")
    conn.execute("INSERT INTO public.bloated SELECT n, n, n FROM generate_series(1, 200000) n")
    conn.execute("DELETE FROM public.bloated WHERE id % 10 <> 0")
    conn.execute("ANALYZE public.bloated")


def test_table_bloat_passes_on_the_demo(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg, bloat=BLOAT)
    w.collect("bloat")
    f = w.finding("table_bloat")
    assert (f.status, f.reason) == ("pass", "no table over 100 MB bloated beyond 30%")


@pytest.mark.parametrize(("review", "status"), [
    ({"bloat_min_bytes": 1024 * 1024}, "fail"),  # ~80 % bloat > 50 %
    ({"bloat_min_bytes": 1024 * 1024, "bloat_fail": 0.99}, "warn"),  # 30 % < ~80 % <= 99 %
    ({}, "pass"),  # a table of ~10 MB is under the default 100 MB: not counted
])
def test_table_bloat_names_the_bloated_table(pg, fresh, tmp_path, watch, review, status):
    with pg.admin(fresh) as conn:
        make_bloated_table(conn)
    w = on_fresh(tmp_path, watch, pg, fresh, bloat=BLOAT, review=review)
    w.collect("bloat")
    f = w.finding("table_bloat")
    assert f.status == status, f.reason
    if status == "pass":
        assert f.reason == "no table over 100 MB bloated beyond 30%"
    else:
        assert f.reason.startswith("public.bloated is ")
        assert f.reason.endswith("% bloat")
        # 9 rows in 10 deleted: ~80 % by the estimate (page and tuple overhead stay)
        assert 0.7 < f.measured["ratio"] < 0.9


# --- replication -----------------------------------------------------------------------------

def test_replication_healthy_is_not_judged_on_a_lone_primary(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect()
    health = w.report()
    assert "replication_healthy" not in {f.check.id for f in health.findings}
    (component,) = [c for c in health.score.components if c.name == "replication"]
    assert component.score is None
    assert component.weight == 0
    assert_points_add_up(health)


def test_replication_healthy_fails_on_a_primary_without_its_expected_standby(
        pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg, replication={"expected_standbys": 1})
    w.collect("replication")
    f = w.finding("replication_healthy")
    assert (f.status, f.reason) == ("fail", "0 of 1 expected standbys streaming")
    (component,) = [c for c in w.report().score.components if c.name == "replication"]
    assert component.score == 0


def test_replication_healthy_is_unknown_while_its_collector_cannot_read(own, tmp_path, watch):
    """docs/review.md: a metric check follows its collector's staleness, "while it has no
    fresh result they are unknown, with its error as the reason". A primary expecting a
    standby, watched by a role without pg_monitor: the replication collector fails (with
    the GRANT to run); the check must say so, not vanish from the review and the score as
    if there were no replication to judge."""
    role = "hiw_health_plain"
    with own.admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'plain-pw'")
    w = watch(make_config(
        tmp_path, {"plain": own.cluster.dsn(HIW_DB, user=role, password="plain-pw")},
        replication={"expected_standbys": 1}))
    try:
        w.collect("replication")
    finally:
        w.close()
        with own.admin() as conn:
            conn.execute(f"DROP ROLE {role}")
    (sample,) = [s for s in w.agent.store.view()[2] if s.collector == "replication"]
    assert sample.error is not None
    assert sample.error.code == "permission_denied"
    found = [f for f in w.report().findings if f.check.id == "replication_healthy"]
    assert found, "replication_healthy is absent although expected_standbys is 1"
    assert found[0].status == "unknown"
    assert f"GRANT pg_monitor TO {role};" in found[0].reason


@pytest.mark.timeout(900)  # starts a pair, stops and starts its servers
def test_replication_healthy_on_a_streaming_pair_and_when_either_side_stops(tmp_path, watch):
    with Topology.start("pg15") as topo:
        w = watch(make_config(
            tmp_path, {"primary": monitor_dsn(topo.primary),
                       "standby": monitor_dsn(topo.standby)},
            replication={"expected_standbys": 1}))

        def replication(target: str) -> Finding:
            w.collect("replication", target=target)
            return w.finding("replication_healthy", target)

        # both pass once the standby streams (and has replayed what the primary wrote)
        wait_for(lambda: replication("primary").status == "pass", what="primary: streaming")
        wait_for(lambda: replication("standby").status == "pass", what="standby: streaming")
        assert replication("primary").reason.startswith("1 standby(s) streaming, replay lag")
        assert replication("standby").reason.startswith("standby streaming, replay lag ")

        # the primary stops: the standby is not streaming
        topo.primary.cluster.stop("fast")
        wait_for(lambda: replication("standby").status == "fail", what="standby: not streaming")
        assert replication("standby").reason == "this standby is not streaming from its primary"

        # back again, then the standby stops: the primary misses its expected standby
        topo.primary.cluster.start()
        topo.primary.cluster.wait_ready()
        wait_for(lambda: replication("standby").status == "pass", what="standby: streaming")
        wait_for(lambda: replication("primary").status == "pass", what="primary: streaming")
        topo.standby.cluster.stop("fast")
        wait_for(lambda: replication("primary").status == "fail", what="primary: standby gone")
        assert replication("primary").reason == "0 of 1 expected standbys streaming"
        w.close()


# --- the score and what the agent serves --------------------------------------------------

def test_points_lost_add_up_to_ten_minus_the_score_on_the_demo(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg)
    w.collect()
    health = w.report()
    assert_points_add_up(health)
    statuses = {f.check.id: f.status for f in health.findings}
    # every metric check is evaluated (replication only where there is some)
    assert set(statuses) >= {c.id for c in METRIC_CHECKS} - {"replication_healthy"}
    assert {"fail", "warn", "pass"} <= set(statuses.values())


def test_a_disabled_check_is_neither_evaluated_nor_scored(pg, tmp_path, watch):
    w = shared(tmp_path, watch, pg, review={"disabled_checks": ["connection_pooling",
                                                                 "expected_indexes"]})
    w.collect()
    health = w.report()
    ids = {f.check.id for f in health.findings}
    assert not ids & {"connection_pooling", "expected_indexes"}
    assert {loss.check for loss in health.score.losses}.isdisjoint(
        {"connection_pooling", "expected_indexes"})
    assert_points_add_up(health)


def openmetrics(url: str) -> dict[str, list[Any]]:
    reply = http_get(url + "/metrics",
                     {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    out: dict[str, list[Any]] = {}
    for family in parse_openmetrics(reply.text):
        out.setdefault(family.name, []).extend(family.samples)
    return out


def test_metrics_and_health_json_serve_the_same_score(pg, tmp_path):
    """The running agent (scheduler, store, Health, exposition, HTTP, as serve_agent wires
    them): after every collector's first run, ``/metrics`` (OpenMetrics) and ``/health``
    give the same score, components, points lost and statuses."""
    name = pg.version
    with running_agent(make_config(tmp_path, {name: monitor_dsn(pg)})) as run:
        agent = run.agent
        # every collector's first run (the next is an hour away)
        wait_for(lambda: all(s.finished_at is not None for s in agent.store.view()[2]),
                 what="every collector's first run")
        agent.stop()  # nothing changes the store from here on; HTTP still serves it
        families = openmetrics(run.url)
        reply = http_get(run.url + "/health")
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/json"
        document = json.loads(reply.text)
        health = agent.health.report()[0]

    (target,) = document["targets"]
    assert target["target"] == name
    assert target["up"] is True
    (score,) = [s for s in families["hiw_health_score"] if s.labels["target"] == name]
    assert score.value == target["score"] == document["score"] == health.score.value
    assert 0 < score.value < 10

    components = {s.labels["component"]: s.value for s in families["hiw_health_component_score"]
                  if s.labels["target"] == name}
    assert components == {c["name"]: c["score"] for c in target["components"]
                          if c["score"] is not None}
    assert set(components) <= set(COMPONENTS)
    assert "replication" not in components

    lost = {s.labels["check"]: s.value for s in families["hiw_health_check_points_lost"]
            if s.labels["target"] == name}
    checks = {c["id"]: c for c in target["checks"]}
    assert lost == {i: c["points_lost"] for i, c in checks.items() if c["status"] != "unknown"}
    assert math.isclose(sum(lost.values()), 10 - score.value,
                        abs_tol=ROUNDING * (len(lost) + 1))

    # every check once in hiw_review_check_status, one-hot, as in /health
    exported: dict[str, list[str]] = {}
    for s in families["hiw_review_check_status"]:
        if s.labels["target"] == name and s.value == 1:
            exported.setdefault(s.labels["check"], []).append(s.labels["status"])
    assert exported == {i: [c["status"]] for i, c in checks.items()}
    for check in ("backup_freshness", "wal_archiving_enabled", "expected_indexes"):
        assert checks[check]["status"] == "fail"
        assert checks[check]["points_lost"] > 0
        assert checks[check]["remediation"] == BY_ID[check].remediation
    assert checks["connection_pooling"]["status"] == "warn"
    assert document["critical_failures"] >= 1  # backup_freshness is critical
