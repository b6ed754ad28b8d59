"""More bad days (issue 7): restarts in a loop, a killed backend, a stalled network,
locks held by others, and a server with no free connection slot."""

from __future__ import annotations

import dataclasses
import threading
import time

import psycopg
import pytest
from conftest import HIW_DB, MONITOR_PASSWORD, start_server
from helpers import (
    agent_connections,
    http_get,
    running_agent,
    sample,
    wait_for,
    wait_for_agent_connections,
)
from proxy import StallingProxy

from hiw_monitor import target as target_module
from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.collectors.base import Collector, VersionedSQL
from hiw_monitor.config import (
    CollectorSettings,
    ConnectionSettings,
    Overrides,
    TargetConfig,
    load,
)
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

pytestmark = pytest.mark.integration

FAST = """
connection:
  connect_timeout: 2s
  statement_timeout: 2s
  lock_timeout: 1s
  backoff_initial: 200ms
  backoff_max: 1s
collectors:
  connections: {interval: 500ms, timeout: 1s}
  database: {interval: 500ms, timeout: 1s}
  backups: {interval: 500ms, timeout: 2s}
  wal_archiving: {enabled: false}
  statements: {enabled: false}
"""


def config_for(tmp_path, dsn: str, name: str = "db", extra: str = ""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(FAST + extra)
    return load(Overrides(config=str(path), dsn=dsn, target_name=name), environ={})


def monitor_dsn(server, port: int | None = None) -> str:
    return (f"host=127.0.0.1 port={port or server.cluster.port} dbname={HIW_DB} "
            f"user=hiw_monitor password={MONITOR_PASSWORD}")


def test_twenty_restarts_one_connection_each_time_none_left(own_pg, tmp_path):
    with own_pg.admin() as admin:
        admin.execute("SELECT 1")
    with running_agent(config_for(tmp_path, monitor_dsn(own_pg))) as run:
        wait_for(lambda: run.value("hiw_up") == 1, what="first connection")
        for _ in range(20):
            own_pg.cluster.stop("immediate")
            wait_for(lambda: run.value("hiw_up") == 0, timeout=20, what="hiw_up 0")
            own_pg.cluster.start()
            # within two collection intervals once the server accepts connections
            wait_for(lambda: run.value("hiw_up") == 1, timeout=20, what="hiw_up 1")
            with own_pg.admin() as admin:
                assert agent_connections(admin) <= 1
    with own_pg.admin() as admin:
        wait_for_agent_connections(admin, 0)  # its backend exits a moment after the close


def test_killed_backend_mid_collection_recovers(pg):
    slow = Collector(name="slow", help="", interval=1, timeout=5,
                     queries={"q": VersionedSQL({130000: "SELECT pg_sleep(3)"})},
                     transform=lambda rows, ctx: [])
    settings = CollectorSettings(name="slow", enabled=True, interval=1, timeout=5,
                                 stale_after=3, options={})
    store = SnapshotStore()
    target = pg.target("db")
    for name in ("slow", "connections"):
        store.register("db", target.redacted, name, 1, 3)
    outcome = {}
    worker = threading.Thread(
        target=lambda: outcome.setdefault("sample", run_collection(target, slow, settings,
                                                                   store)))
    worker.start()
    with pg.admin() as admin:
        wait_for(lambda: admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hiw_monitor' "
            "AND query LIKE '%pg_sleep%'").fetchone()[0] == 1, what="the agent mid-query")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'hiw_monitor'")
    worker.join(timeout=30)
    assert outcome["sample"].error is not None  # recorded, not raised
    assert outcome["sample"].error.code == "connection"
    after = run_collection(target, BY_NAME["connections"],
                           load(environ={}, require_targets=False).collectors["connections"],
                           store)
    target.close()
    assert after.error is None  # the very next collection reconnects and succeeds


@pytest.mark.parametrize("version", ["pg15"])
def test_network_stall_is_noticed_and_recovered(version, tmp_path):
    server = start_server(version)
    proxy = StallingProxy(server.cluster.port)
    try:
        stalled = config_for(tmp_path, monitor_dsn(server, proxy.port), "stalled")
        direct = config_for(tmp_path, monitor_dsn(server), "direct")
        both = type(stalled)(**{**{f: getattr(stalled, f) for f in stalled.__slots__},
                                "targets": (*stalled.targets, *direct.targets)})
        with running_agent(both) as run:
            wait_for(lambda: run.value("hiw_up", target="stalled") == 1, what="up via proxy")
            proxy.stall()
            runs_before = run.value("hiw_collector_runs_total", target="direct",
                                    collector="connections")
            # client-side deadline: collector timeout (1 s) + grace (5 s), then a reconnect
            # attempt bounded by connect_timeout (2 s): ~8 s; the bound is a hang guard
            started = time.monotonic()
            while run.value("hiw_up", target="stalled") != 0:
                assert time.monotonic() - started < 60, "stall not noticed in time"
                response = http_get(run.url + "/metrics", timeout=2)  # always served
                assert response.status == 200
                time.sleep(0.2)
            assert sample(run.metrics(), "hiw_collector_last_error_info", target="stalled",
                          reason="client_timeout") is not None or \
                sample(run.metrics(), "hiw_collector_last_error_info", target="stalled",
                       reason="connection") is not None
            # the other target kept being collected during the stall
            assert run.value("hiw_collector_runs_total", target="direct",
                             collector="connections") > runs_before
            proxy.resume()
            wait_for(lambda: run.value("hiw_up", target="stalled") == 1, timeout=30,
                     what="recovery after the stall")
    finally:
        proxy.close()
        server.cluster.destroy()


def test_lock_held_by_the_app_never_makes_the_agent_wait(pg, tmp_path):
    """ACCESS EXCLUSIVE on the backup log for 30 s: the agent gives up within lock_timeout
    every time, and an ALTER TABLE issued while the agent collects never waits on it."""
    dsn = monitor_dsn(pg)
    with running_agent(config_for(tmp_path, dsn)) as run:
        wait_for(lambda: run.value("hiw_collector_up", collector="backups") == 1,
                 what="backups collected")
        holder = pg.admin()
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE backup_execution_log IN ACCESS EXCLUSIVE MODE")
        try:
            deadline = time.monotonic() + 30
            longest = 0.0
            while time.monotonic() < deadline:
                with pg.admin() as admin:
                    waits = admin.execute(
                        "SELECT coalesce(max(extract(epoch FROM now() - query_start)), 0) "
                        "FROM pg_stat_activity WHERE application_name = 'hiw_monitor' "
                        "AND wait_event_type = 'Lock'").fetchone()[0]
                longest = max(longest, float(waits))
                time.sleep(0.2)
            assert longest <= 1.5  # lock_timeout 1 s, plus sampling slack
            text = run.metrics()
            assert sample(text, "hiw_collector_last_error_info", collector="backups",
                          reason="lock_timeout") == 1
            assert sample(text, "hiw_backup_status", status="unknown") is not None
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_for(lambda: run.value("hiw_collector_up", collector="backups") == 1,
                 what="backups recovered")
        # DDL while the agent keeps collecting: it never queues behind the agent for long
        with pg.admin() as admin:
            admin.execute("SET lock_timeout = '3s'")
            for _ in range(10):
                admin.execute("ALTER TABLE backup_execution_log ADD COLUMN tmp_probe int")
                admin.execute("ALTER TABLE backup_execution_log DROP COLUMN tmp_probe")
                time.sleep(0.1)


def test_no_free_connection_slot(tmp_path):
    server = start_server("pg15", settings={"max_connections": "8",
                                            "superuser_reserved_connections": "2"})
    hogs: list[psycopg.Connection] = []
    try:
        with server.admin() as admin:
            admin.execute("CREATE ROLE hog LOGIN PASSWORD 'hog-pw'")
        hog_dsn = server.cluster.dsn(HIW_DB, user="hog", password="hog-pw")

        def fill() -> None:
            while True:
                try:
                    hogs.append(psycopg.connect(hog_dsn, connect_timeout=3))
                except psycopg.OperationalError:
                    return

        # 1. at start-up with no free slot: retries with backoff and says why
        fill()
        with running_agent(config_for(tmp_path, monitor_dsn(server))) as run:
            wait_for(lambda: sample(run.metrics(), "hiw_collector_last_error_info",
                                    reason="too_many_connections") == 1,
                     what="too_many_connections reported")
            assert run.value("hiw_up") == 0
            errors = run.value("hiw_collector_errors_total", collector="connections")
            hogs.pop().close()
            wait_for(lambda: run.value("hiw_up") == 1, timeout=20, what="connected at last")
            assert errors >= 1
            # 2. exhausted while connected: reported from the existing connection
            fill()
            wait_for(lambda: (run.value("hiw_connections_utilization_ratio") or 0)
                     >= (8 - 2) / 8, timeout=20, what="full utilisation reported")
            assert run.value("hiw_up") == 1
    finally:
        for conn in hogs:
            conn.close()
        server.cluster.destroy()


def _multi_statement(statements: list[str], before_commit=None) -> Collector:
    """A collector whose run executes several statements (one inside a savepoint, as
    bloat's exact mode does), then optionally calls ``before_commit``."""

    def fetch(cur, ctx):
        for index, statement in enumerate(statements):
            if index == 1:
                with cur.connection.transaction():  # SAVEPOINT ... RELEASE
                    cur.execute(statement)
            else:
                cur.execute(statement)
        if before_commit is not None:
            before_commit()
        return {}

    return Collector(name="multi", help="", interval=60, timeout=2, queries={},
                     transform=lambda rows, ctx: [], fetch=fetch)


MULTI = CollectorSettings(name="multi", enabled=True, interval=60, timeout=2,
                          stale_after=180, options={})


def test_client_deadline_is_per_statement_not_per_collection(pg, monkeypatch):
    """Eleven statements of 0.5 s each (5.5 s at least) under a 4 s statement timeout and
    a 1 s grace: each statement fits its 5 s deadline with seconds to spare, their sum
    cannot, and that is fine."""
    monkeypatch.setattr(target_module, "CLIENT_GRACE", 1.0)
    store = SnapshotStore()
    target = pg.target("db")
    store.register("db", target.redacted, "multi", 60, 180)
    slow = dataclasses.replace(MULTI, timeout=4.0)
    try:
        outcome = run_collection(target, _multi_statement(["SELECT pg_sleep(0.5)"] * 11),
                                 slow, store)
        assert outcome.error is None, outcome.error
        assert target.up
        again = run_collection(target, _multi_statement(["SELECT 1"]), MULTI, store)
        assert again.error is None  # same connection, still healthy
    finally:
        target.close()


def _stalling_fetch(where: str, proxy: StallingProxy):
    def fetch(cur, ctx):
        cur.execute("SELECT 1")
        if where == "statement":
            proxy.stall()
            cur.execute("SELECT 2")  # never answered
        elif where == "savepoint":
            proxy.stall()
            with cur.connection.transaction():  # the SAVEPOINT is never answered
                cur.execute("SELECT 2")
        else:
            cur.execute("SELECT 2")
            proxy.stall()  # the COMMIT is never answered
        return {}

    return fetch


@pytest.mark.parametrize("where", ["statement", "savepoint", "commit"])
def test_stall_within_a_collection_is_a_client_timeout(where, monkeypatch):
    """The network stalls in the middle of a collection (before a statement, before a
    savepoint, or before COMMIT): that round trip misses its deadline, the target goes
    down with reason client_timeout, and comes back once the network does."""
    monkeypatch.setattr(target_module, "CLIENT_GRACE", 1.0)
    server = start_server("pg15")
    proxy = StallingProxy(server.cluster.port)
    store = SnapshotStore()
    target = Target(TargetConfig("stalled", monitor_dsn(server, proxy.port)),
                    ConnectionSettings(connect_timeout=2, backoff_initial=0.1,
                                       backoff_max=0.2))
    store.register("stalled", target.redacted, "multi", 60, 180)
    healthy = _multi_statement(["SELECT 1"])
    try:
        assert run_collection(target, healthy, MULTI, store).error is None
        stalling = dataclasses.replace(healthy, fetch=_stalling_fetch(where, proxy))
        failed = run_collection(target, stalling, MULTI, store)
        assert failed.error is not None
        assert failed.error.code == "client_timeout", failed.error
        assert "for one statement" in failed.error.text
        assert not target.up
        proxy.resume()
        wait_for(lambda: run_collection(target, healthy, MULTI, store).error is None,
                 timeout=30, what="recovery after the stall")
        assert target.up
    finally:
        target.close()
        proxy.close()
        server.cluster.destroy()
