"""Bad days: the database is missing, refuses us, restarts, or one query fails."""

from __future__ import annotations

import pytest
import structlog
from conftest import HIW_DB, MONITOR_PASSWORD, binaries_for
from helpers import (
    agent_connections,
    http_get,
    running_agent,
    sample,
    wait_for,
    wait_for_agent_connections,
)

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.collectors.base import Collector, VersionedSQL
from hiw_monitor.config import Overrides, load
from hiw_monitor.demo.cluster import Cluster
from hiw_monitor.snapshot import SnapshotStore

pytestmark = pytest.mark.integration

FAST = """
connection:
  connect_timeout: 2s
  backoff_initial: 200ms
  backoff_max: 1s
collectors:
  connections: {interval: 500ms}
  database: {interval: 500ms}
"""


def fast_config(tmp_path, dsn: str, name: str = "db"):
    path = tmp_path / "fast.yaml"
    path.write_text(FAST)
    return load(Overrides(config=str(path), dsn=dsn, target_name=name), environ={})


@pytest.mark.parametrize("version", ["pg15", "pg18"])
def test_database_unreachable_at_start_then_appears(tmp_path, version):
    cluster = Cluster(binaries_for(version)).init()  # initialised, not started
    try:
        dsn = cluster.dsn(HIW_DB, user="hiw_monitor", password=MONITOR_PASSWORD)
        with running_agent(fast_config(tmp_path, dsn)) as run:
            wait_for(lambda: (run.value("hiw_collector_errors_total", collector="database")
                              or 0) >= 2, what="failed attempts")
            text = run.metrics()
            assert sample(text, "hiw_up", target="db") == 0
            assert sample(text, "hiw_collector_last_error_info", collector="database",
                          reason="connection") == 1
            assert http_get(run.url + "/ready").status == 503
            assert http_get(run.url + "/healthz").status == 200

            cluster.start()
            cluster.create_hiw_database(monitor_password=MONITOR_PASSWORD)
            wait_for(lambda: run.value("hiw_up", target="db") == 1, timeout=30,
                     what="hiw_up 1 after the database appeared")
            wait_for(lambda: http_get(run.url + "/ready").status == 200, what="/ready")
            wait_for(lambda: run.value("hiw_database_size_bytes", datname=HIW_DB) is not None,
                     what="database series")
    finally:
        cluster.destroy()


def test_wrong_password_is_reported_without_the_password(pg, tmp_path):
    secret = "Wr0ng-Pa55word-xyzzy"
    dsn = pg.cluster.dsn(HIW_DB, user="hiw_monitor", password=secret)
    with structlog.testing.capture_logs() as logs, running_agent(fast_config(tmp_path, dsn)) as run:
        wait_for(lambda: (run.value("hiw_collector_errors_total", collector="connections")
                          or 0) >= 1, what="a failed run")
        text = run.metrics()
        page = http_get(run.url + "/").text
    assert sample(text, "hiw_up", target="db") == 0
    assert sample(text, "hiw_collector_last_error_info", collector="connections",
                  reason="auth_failed") == 1
    assert secret not in text
    assert secret not in page
    down = [e for e in logs if e["event"] == "target_down"]
    assert down
    assert down[0]["reason"] == "auth_failed"
    assert "password authentication failed" in down[0]["error"]
    assert all(secret not in repr(e) for e in logs)


def test_restart_reconnects_without_leaking_connections(own_pg, tmp_path):
    dsn = own_pg.cluster.dsn(HIW_DB, user="hiw_monitor", password=MONITOR_PASSWORD)
    with running_agent(fast_config(tmp_path, dsn)) as run:
        wait_for(lambda: run.value("hiw_up", target="db") == 1, what="first connection")
        for _ in range(3):
            own_pg.cluster.stop("immediate")
            wait_for(lambda: run.value("hiw_up", target="db") == 0, what="hiw_up 0 when down")
            own_pg.cluster.start()
            wait_for(lambda: run.value("hiw_up", target="db") == 1, timeout=30,
                     what="hiw_up 1 after restart")
            with own_pg.admin() as admin:
                assert agent_connections(admin) == 1
    with own_pg.admin() as admin:
        wait_for_agent_connections(admin, 0)  # its backend exits a moment after the close


def test_failing_collector_stays_local(own_pg):
    """Permission denied in one collector: its collector_up is 0, the other keeps working."""
    with own_pg.admin() as admin:
        admin.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_postmaster_start_time() "
                      "FROM PUBLIC")
    settings = load(environ={}, require_targets=False).collectors
    store = SnapshotStore()
    target = own_pg.target("db")
    for name in ("database", "connections"):
        store.register("db", target.redacted, name, 1, 3)
    failed = run_collection(target, BY_NAME["database"], settings["database"], store)
    ok = run_collection(target, BY_NAME["connections"], settings["connections"], store)
    target.close()
    assert failed.error is not None
    assert failed.error.code == "permission_denied"
    assert "pg_monitor" in failed.error.text  # the fix is in the message
    assert ok.error is None


def test_statement_timeout_fails_one_run_not_the_connection(pg):
    slow = Collector(name="slow", help="", interval=1, timeout=0.2,
                     queries={"q": VersionedSQL({130000: "SELECT pg_sleep(30)"})},
                     transform=lambda rows, ctx: [])
    settings = load(environ={}, require_targets=False).collectors
    timeout_settings = type(settings["connections"])(
        name="slow", enabled=True, interval=1, timeout=0.2, stale_after=3, options={})
    store = SnapshotStore()
    target = pg.target("db")
    store.register("db", target.redacted, "slow", 1, 3)
    store.register("db", target.redacted, "connections", 1, 3)
    failed = run_collection(target, slow, timeout_settings, store)
    ok = run_collection(target, BY_NAME["connections"], settings["connections"], store)
    target.close()
    assert failed.error is not None
    assert failed.error.code == "timeout"
    assert ok.error is None
    # cancelled by statement_timeout (0.2 s), not by the client deadline (5.2 s), not
    # waited out (30 s); the margin is for connecting on a busy machine
    assert failed.duration < 5.0


def test_series_go_stale_while_down_and_come_back(own_pg, tmp_path):
    """Last good series are withheld after stale_after; self-metrics keep reporting."""
    dsn = own_pg.cluster.dsn(HIW_DB, user="hiw_monitor", password=MONITOR_PASSWORD)
    with running_agent(fast_config(tmp_path, dsn)) as run:
        wait_for(lambda: run.value("hiw_database_size_bytes", datname=HIW_DB) is not None,
                 what="database series")
        own_pg.cluster.stop("fast")
        wait_for(lambda: run.value("hiw_collector_stale", collector="database") == 1,
                 what="database collector stale")
        text = run.metrics()
        assert sample(text, "hiw_database_size_bytes", datname=HIW_DB) is None
        assert sample(text, "hiw_collector_up", collector="database") == 0
        assert sample(text, "hiw_collector_last_success_timestamp_seconds",
                      collector="database") > 0
        own_pg.cluster.start()
        wait_for(lambda: run.value("hiw_database_size_bytes", datname=HIW_DB) is not None,
                 timeout=30, what="series back after recovery")
        assert run.value("hiw_collector_stale", collector="database") == 0
