"""The backups collector's plan on real servers: the tables and columns are looked up once
per connection, a missing table is reported once as skipped with its fix, and the table is
picked up once it exists, without restarting the agent."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs
from test_backups import SEED_SCHEMA, BackupDb, add_backup, add_run, status_of

from hiw_monitor import collect
from hiw_monitor.collect import plan_of
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.collectors.backups import Plan
from hiw_monitor.exposition import self_metrics

pytestmark = pytest.mark.integration
# the discovery query (backups._TABLES) as pg_stat_statements normalizes it
DISCOVERY = "%AS t(ord, role, relname)%"
CONFIGURATIONS_ONLY = SEED_SCHEMA.split(";")[0] + ";"


def discovery_calls(server) -> int:
    with server.admin() as admin:
        row = admin.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                            "WHERE query LIKE %s", [DISCOVERY]).fetchone()
    return int(row[0])


def planned_events(logs) -> list[dict]:
    return [e for e in logs if e["event"] == "collector_planned"
            and e["collector"] == "backups"]


@pytest.fixture
def db(pg):
    database = BackupDb(pg)
    yield database
    database.close()


def test_the_backups_plan_is_made_once_per_connection(db):
    add_run(db.conn, add_backup(db.conn, "nightly"), "completed", 2)
    before = discovery_calls(db.server)
    with capture_logs() as logs:
        for _ in range(3):
            sample = db.collect()
            assert sample.error is None, sample.error
        assert discovery_calls(db.server) == before + 1  # three polls, one plan
        planned = plan_of(db.target, BY_NAME["backups"])
        assert planned is not None
        assert isinstance(planned.plan, Plan)
        assert planned.plan.columns["verified_column"] == "verified_restore"
        assert planned.plan.verification
        db.target.close()  # a reconnect plans again
        assert db.collect().error is None
        assert discovery_calls(db.server) == before + 2
    assert status_of(db.text(), "nightly") == "healthy"
    assert [e["outcome"] for e in planned_events(logs)] == ["installed"]  # logged once


def test_a_missing_table_is_skipped_once_then_picked_up_without_a_restart(pg, monkeypatch):
    monkeypatch.setattr(collect, "REPLAN_SKIPPED_AFTER", 1e9)  # no re-check by the clock
    database = BackupDb(pg, CONFIGURATIONS_ONLY)
    try:
        nightly = add_backup(database.conn, "nightly")
        before = discovery_calls(pg)
        with capture_logs() as logs:
            samples = [database.collect() for _ in range(3)]
            generation = database.target.generation
            assert discovery_calls(pg) == before + 1  # the skip is remembered, not re-made
            database.conn.execute(SEED_SCHEMA.split(";")[1])  # the app creates its log
            database.conn.execute("GRANT SELECT ON backup_execution_log TO hiw_monitor")
            add_run(database.conn, nightly, "completed", 3)
            monkeypatch.setattr(collect, "REPLAN_SKIPPED_AFTER", 0.0)  # time to look again
            recovered = database.collect()
        assert {s.error.code for s in samples} == {"undefined_table"}
        for failed in samples:
            assert "public.backup_execution_log does not exist" in failed.error.text
            assert "collectors.backups.log_table" in failed.error.text
        events = planned_events(logs)
        assert [e["outcome"] for e in events] == ["skipped", "installed"]
        assert events[0]["reason"] == "undefined_table"
        assert "collectors.backups.log_table" in events[0]["error"]
        assert recovered.error is None, recovered.error
        assert database.target.generation == generation  # same connection: no restart
        assert status_of(database.text(), "nightly") == "healthy"
    finally:
        database.close()


def test_a_skipped_collector_shows_its_reason_in_the_self_metrics(pg, monkeypatch):
    monkeypatch.setattr(collect, "REPLAN_SKIPPED_AFTER", 1e9)
    database = BackupDb(pg, CONFIGURATIONS_ONLY)
    try:
        assert database.collect().error.code == "undefined_table"
        _, targets, recorded = database.store.view()
        families = {f.name: f for f in self_metrics(targets, recorded, 0.0)}
        assert families["hiw_collector_up"].samples[0].value == 0
        reasons = {s.labels["reason"] for s in
                   families["hiw_collector_last_error_info"].samples}
        assert reasons == {"undefined_table"}
    finally:
        database.close()


def test_a_grant_revoked_on_a_planned_connection_is_explained_at_once(db):
    """The plan was made while the table was readable; the first failed run already says
    which GRANT to run, and the run after the GRANT succeeds (the plan is made again)."""
    add_run(db.conn, add_backup(db.conn, "nightly"), "completed", 1)
    assert db.collect().error is None
    assert plan_of(db.target, BY_NAME["backups"]) is not None
    db.conn.execute("REVOKE SELECT ON backup_execution_log FROM hiw_monitor")
    failed = db.collect()
    assert failed.error.code == "permission_denied"
    assert "GRANT SELECT ON public.backup_execution_log TO hiw_monitor;" in failed.error.text
    db.conn.execute("GRANT SELECT ON backup_execution_log TO hiw_monitor")
    assert db.collect().error is None
    assert status_of(db.text(), "nightly") == "healthy"
