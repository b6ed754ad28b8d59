"""PgBouncer targets on real PgBouncers: 1.18 (Debian bookworm, the host's package) and 1.24
(Debian trixie, run from PostgreSQL 17's root through chroot), each in front of the real
PostgreSQL 15 fixture in transaction mode, on 127.0.0.1, as an unprivileged user, with an
auth_file of SCRAM and md5 secrets (tests/pgbouncer.py).

- Every family of docs/metrics.md's pgbouncer section, and no other, from the console of
  each version; the agent's connection carries no startup option even with PGOPTIONS
  set, and stays on the simple query protocol past psycopg's prepare threshold.
- The classroom burst (issue 12 item 7): `pgbench -c 20` through a pool of 2; the agent
  shows clients waiting and the longest wait rising, the pool saturated, and in a real
  Prometheus with the bundled rules HiwPgbouncerClientsWaiting fires and every query of
  the PgBouncer dashboard returns data.
- PgBouncer down and restarted (item 8): hiw_up 0 for that target only while a PostgreSQL
  target in the same agent keeps reporting; it reconnects; PgBouncer's own SHOW CLIENTS
  shows exactly one agent connection throughout, and none after the agent stops.
- A stalled PgBouncer (SIGSTOP) is cut off by the client-side deadline, and the
  connection is replaced, not leaked.
- The config's target type, validated strictly; the transform on an older layout.

Waits are hang guards (generous), never verdicts.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import psycopg
import pytest
import yaml
from conftest import MONITOR_PASSWORD
from helpers import running_agent, wait_for
from pgbouncer import DEFAULT_POOL_SIZE, MAX_CLIENT_CONN, VERSIONS, Bouncer
from pgbouncer import MONITOR_PASSWORD as PGB_PASSWORD
from pgbouncer import MONITOR_USER as PGB_USER
from prometheus_client.core import Metric
from rules.dashboards_lib import panel_queries
from tools import prometheus, promql

from hiw_monitor import cli
from hiw_monitor.collect import plan_of, run_collection
from hiw_monitor.collectors import BY_NAME, PGBOUNCER_NAMES
from hiw_monitor.collectors import pgbouncer as pgb
from hiw_monitor.collectors.base import Context, Result, ServerInfo
from hiw_monitor.config import ConnectionSettings, Overrides, TargetConfig, load
from hiw_monitor.scheduler import Agent
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
PG_VERSIONS = ("pg15",)
ROOT = Path(__file__).parents[2]
CATALOG = ROOT / "docs" / "metrics.md"
COLLECTOR = BY_NAME["pgbouncer"]
DEFAULTS = load(environ={}, require_targets=False).collectors
POOL = {"database": "hiw", "user": "postgres"}  # the fixture's pool: forced user postgres
DASHBOARD = "HiW — PgBouncer"


@pytest.fixture(params=VERSIONS)
def bouncer(request: pytest.FixtureRequest, pg) -> Iterator[Bouncer]:
    with Bouncer.start(request.param, pg.cluster.port) as started:
        yield started


def console_target(bouncer: Bouncer, name: str = "pgb", **settings: float) -> Target:
    config = TargetConfig(name, bouncer.dsn(), password=PGB_PASSWORD, kind="pgbouncer")
    return Target(config, ConnectionSettings(**settings))


def collect(target: Target, store: SnapshotStore, timeout: float | None = None):
    settings = DEFAULTS["pgbouncer"]
    if timeout is not None:
        settings = replace(settings, timeout=timeout)
    store.register(target.name, target.redacted, "pgbouncer", settings.interval,
                   settings.stale_after)
    return run_collection(target, COLLECTOR, settings, store)


def exposed(families: list[Metric]) -> set[str]:
    return {f"{f.name}_total" if f.type == "counter" else f.name for f in families}


def series(families, name: str, **labels: str) -> float | None:
    for family in families:
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def documented() -> set[str]:
    names = re.findall(r"^\| `(hiw_pgbouncer_[a-z0-9_]+)` \|", CATALOG.read_text(), re.M)
    return set(names)


# --- the collector on each version ------------------------------------------------------


def test_every_documented_family_from_each_version(bouncer, monkeypatch):
    # a PGOPTIONS in the agent's environment must not reach PgBouncer, which refuses
    # startup parameters it does not know
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=1000")
    store = SnapshotStore()
    target = console_target(bouncer)
    try:
        with bouncer.client() as app:
            for _ in range(3):
                app.execute("SELECT 1")
            # seven runs: psycopg prepares a statement run five times (extended protocol,
            # which the console refuses) unless told not to
            samples = [collect(target, store) for _ in range(7)]
            assert [s.error for s in samples] == [None] * 7
            families = list(samples[-1].families)
            assert exposed(families) == documented()

            (version,) = bouncer.show("VERSION")
            assert target.server is not None
            assert f"PgBouncer {target.server.version}" == version["version"]
            planned = plan_of(target, COLLECTOR)
            assert planned is not None
            assert planned.plan == pgb.Plan(target.server.version)

            assert series(families, "hiw_pgbouncer_pool_size", **POOL) == DEFAULT_POOL_SIZE
            assert series(families, "hiw_pgbouncer_pool_client_connections", **POOL,
                          state="active") == 1
            assert series(families, "hiw_pgbouncer_pool_client_connections", **POOL,
                          state="waiting") == 0
            assert series(families, "hiw_pgbouncer_pool_max_wait_seconds", **POOL) == 0
            assert series(families, "hiw_pgbouncer_max_client_connections") == MAX_CLIENT_CONN
            assert series(families, "hiw_pgbouncer_default_pool_size") == DEFAULT_POOL_SIZE
            assert series(families, "hiw_pgbouncer_pool_mode", pool_mode="transaction") == 1
            assert series(families, "hiw_pgbouncer_pool_mode", pool_mode="session") == 0
            # the console itself is no pool of the app
            assert series(families, "hiw_pgbouncer_pool_size", database="pgbouncer") is None
            used = {row["list"]: row["items"] for row in bouncer.show("LISTS")}["used_clients"]
            assert series(families, "hiw_pgbouncer_client_connections_utilization_ratio") \
                == pytest.approx(used / MAX_CLIENT_CONN, abs=2 / MAX_CLIENT_CONN)

            def counted() -> bool:  # SHOW STATS totals move every stats_period (1 s here)
                found = list(collect(target, store).families)
                return (series(found, "hiw_pgbouncer_transactions_total", database="hiw")
                        or 0) >= 3
            wait_for(counted, timeout=60, what="the three transactions in SHOW STATS")

        clients = [row for row in bouncer.show("CLIENTS") if row["user"] == PGB_USER]
        assert [(c["database"], c["application_name"]) for c in clients] == \
            [("pgbouncer", "hiw_monitor")]
    finally:
        target.close()
    wait_for(lambda: bouncer.agent_clients() == 0, what="the agent's console connection gone")


def test_the_console_cursor_runs_only_show_commands(bouncer):
    target = console_target(bouncer)
    try:
        with target.lock, target.transaction(5.0) as cur:
            cur.execute("SHOW VERSION")
            assert cur.fetchone()["version"].startswith("PgBouncer ")
            with pytest.raises(psycopg.ProgrammingError, match="only SHOW"):
                cur.execute("SELECT 1")
            with pytest.raises(psycopg.ProgrammingError, match="no query parameters"):
                cur.execute("SHOW POOLS", [1])
            cur.execute("SHOW LISTS")
            assert cur.fetchall()
        assert target.up
        assert collect(target, SnapshotStore()).error is None
    finally:
        target.close()


# --- the classroom burst ------------------------------------------------------------------


class Burst:
    """Rounds of ``pgbench -c 20 -j 2 -t 4`` through the pool (each transaction holds a
    server connection for 0.5 s), one after the other until stopped: each round is
    bounded by its transaction count, the whole by ``rounds``."""

    def __init__(self, bouncer: Bouncer, bindir: Path, rounds: int = 15) -> None:
        self.script = bouncer.base / "burst.sql"
        self.script.write_text("SELECT pg_sleep(0.5);\n")
        self.bouncer, self.bindir, self.rounds = bouncer, bindir, rounds
        self.stop = threading.Event()
        self.codes: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(self.rounds):
            if self.stop.is_set():
                return
            process = self.bouncer.pgbench(self.bindir, "-c", "20", "-j", "2", "-t", "4",
                                           "-f", str(self.script))
            try:
                self.codes.append(process.wait(timeout=600))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
                self.codes.append(-1)

    def __enter__(self) -> Burst:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=900)


def test_classroom_burst_waits_saturates_and_pages(pg, bouncer, tmp_path, monkeypatch):
    secret = tmp_path / "pgbouncer.secret"
    secret.write_text(PGB_PASSWORD + "\n")
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump({
        "targets": [
            {"name": "pgb", "type": "pgbouncer", "host": "127.0.0.1", "port": bouncer.port,
             "user": PGB_USER, "password_file": str(secret)},
            {"name": "hiw", "dsn": pg.monitor_dsn(), "password_env": "HIW_TEST_PG_PASSWORD"},
        ],
        "connection": {"backoff_initial": "200ms", "backoff_max": "1s"},
        "collectors": {"pgbouncer": {"interval": "1s"}, "connections": {"interval": "5s"},
                       **{name: {"enabled": False} for name in BY_NAME
                          if name not in ("pgbouncer", "connections")}},
    }))
    monkeypatch.setenv("HIW_TEST_PG_PASSWORD", MONITOR_PASSWORD)
    config = load(Overrides(config=str(config_file)), environ={})
    with running_agent(config) as run, prometheus(tmp_path, run.url) as prom:
        wait_for(lambda: bool(promql(prom, 'hiw_up{target="pgb"} == 1')), timeout=180,
                 what="Prometheus scraping the agent's PgBouncer target")
        assert run.value("hiw_pgbouncer_pool_client_connections", target="pgb",
                         state="waiting") in (None, 0)

        waits: list[float] = []

        def rising() -> bool:
            wait = run.value("hiw_pgbouncer_pool_max_wait_seconds", target="pgb", **POOL)
            if wait is not None and (not waits or wait != waits[-1]):
                waits.append(wait)
            return any(0 < a < b for a, b in itertools.pairwise(waits))

        with Burst(bouncer, pg.cluster.binaries.bindir) as burst:
            wait_for(lambda: (run.value("hiw_pgbouncer_pool_client_connections",
                                        target="pgb", state="waiting", **POOL) or 0) > 0,
                     timeout=180, what="clients waiting in the pool")
            wait_for(rising, timeout=180, every=0.3, what=f"maxwait rising ({waits})")
            wait_for(lambda: run.value("hiw_pgbouncer_pool_saturation_ratio",
                                       target="pgb", **POOL) == 1.0,
                     timeout=180, what="the pool saturated (2 of 2 servers active)")
            wait_for(lambda: bool(promql(
                prom, 'ALERTS{alertname="HiwPgbouncerClientsWaiting", '
                      'alertstate="firing", target="pgb", database="hiw"}')),
                timeout=300, what="HiwPgbouncerClientsWaiting firing in Prometheus")

            queries = [(panel, expr) for dashboard, panel, expr in panel_queries()
                       if dashboard == DASHBOARD]
            assert len(queries) >= 15

            def all_return_data() -> bool:
                return all(promql(prom, expr) for _, expr in queries)
            wait_for(all_return_data, timeout=180, what="data for every PgBouncer panel: "
                     + ", ".join(p for p, e in queries if not promql(prom, e)))
            assert not promql(prom, 'ALERTS{alertname=~"HiwPgbouncerDown|HiwTargetDown"}')
        assert burst.codes, bouncer.log_tail()
        assert set(burst.codes) == {0}, bouncer.log_tail()

        wait_for(lambda: run.value("hiw_pgbouncer_pool_client_connections", target="pgb",
                                   state="waiting", **POOL) == 0,
                 timeout=180, what="the queue drained after the burst")
        assert (run.value("hiw_pgbouncer_client_wait_seconds_total", target="pgb",
                          database="hiw") or 0) > 0
        assert (run.value("hiw_pgbouncer_transactions_total", target="pgb",
                          database="hiw") or 0) >= 80
        assert bouncer.agent_clients() == 1


# --- down, restarted, stalled -------------------------------------------------------------


def test_down_and_restarted_without_leaking_connections(pg, bouncer, tmp_path, monkeypatch):
    monkeypatch.setenv("HIW_TEST_PGB_PASSWORD", PGB_PASSWORD)
    monkeypatch.setenv("HIW_TEST_PG_PASSWORD", MONITOR_PASSWORD)
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump({
        "targets": [
            {"name": "pgb", "type": "pgbouncer", "dsn": bouncer.dsn(),
             "password_env": "HIW_TEST_PGB_PASSWORD"},
            {"name": "hiw", "dsn": pg.monitor_dsn(), "password_env": "HIW_TEST_PG_PASSWORD"},
        ],
        "connection": {"connect_timeout": "2s", "backoff_initial": "200ms",
                       "backoff_max": "1s"},
        "collectors": {"pgbouncer": {"interval": "500ms"}, "connections": {"interval": "500ms"},
                       **{name: {"enabled": False} for name in BY_NAME
                          if name not in ("pgbouncer", "connections")}},
    }))
    config = load(Overrides(config=str(config_file)), environ={})

    def runs(run, target: str, collector: str) -> float:
        return run.value("hiw_collector_runs_total", target=target, collector=collector) or 0

    with running_agent(config) as run:
        wait_for(lambda: run.value("hiw_up", target="pgb") == 1
                 and run.value("hiw_up", target="hiw") == 1, timeout=120, what="both up")
        # each collector on its own kind of target only
        assert run.value("hiw_collector_up", target="pgb", collector="connections") is None
        assert run.value("hiw_collector_up", target="hiw", collector="pgbouncer") is None
        wait_for(lambda: runs(run, "pgb", "pgbouncer") >= 5, timeout=120, what="five runs")
        assert bouncer.agent_clients() == 1

        for _ in range(2):
            bouncer.stop()
            wait_for(lambda: run.value("hiw_up", target="pgb") == 0, timeout=120,
                     what="hiw_up 0 for PgBouncer")
            wait_for(lambda: run.value("hiw_collector_last_error_info", target="pgb",
                                       collector="pgbouncer", reason="connection") == 1,
                     timeout=120, what="the connection reason")
            # the PostgreSQL target in the same agent keeps reporting
            before = runs(run, "hiw", "connections")
            wait_for(lambda before=before: runs(run, "hiw", "connections") >= before + 3,
                     timeout=120,
                     what="the PostgreSQL target still collecting")
            assert run.value("hiw_up", target="hiw") == 1
            assert run.value("hiw_collector_up", target="hiw", collector="connections") == 1
            assert run.value("hiw_up", target="pgb") == 0

            bouncer.start_again()
            wait_for(lambda: run.value("hiw_up", target="pgb") == 1
                     and run.value("hiw_collector_up", target="pgb", collector="pgbouncer") == 1,
                     timeout=120, what="reconnected after the restart")
            after = runs(run, "pgb", "pgbouncer")
            wait_for(lambda after=after: runs(run, "pgb", "pgbouncer") >= after + 5,
                     timeout=120,
                     what="five runs after the restart")
            assert bouncer.agent_clients() == 1  # PgBouncer's own SHOW CLIENTS
    wait_for(lambda: bouncer.agent_clients() == 0, timeout=60,
             what="no agent connection left after the agent stopped")


def test_a_stalled_pgbouncer_hits_the_client_deadline(bouncer):
    store = SnapshotStore()
    target = console_target(bouncer, backoff_initial=0.1, backoff_max=0.2)
    try:
        assert collect(target, store).error is None
        assert bouncer.agent_clients() == 1
        os.kill(bouncer.pid, signal.SIGSTOP)
        try:
            # collector timeout 0.5 s: the watchdog cuts the console off after 5.5 s
            sample = collect(target, store, timeout=0.5)
        finally:
            os.kill(bouncer.pid, signal.SIGCONT)
        assert sample.error is not None
        assert sample.error.code == "client_timeout", sample.error
        assert not target.up

        wait_for(lambda: collect(target, store).error is None, timeout=120,
                 what="reconnected after PgBouncer resumed")
        # the cut-off connection is gone on PgBouncer's side too: one agent client, not two
        wait_for(lambda: bouncer.agent_clients() == 1, timeout=60, what="one agent client")
        for _ in range(3):
            assert collect(target, store).error is None
        assert bouncer.agent_clients() == 1
    finally:
        target.close()
    wait_for(lambda: bouncer.agent_clients() == 0, timeout=60, what="none after close")


# --- configuration and scheduling (no server) ---------------------------------------------


def test_once_with_the_pgbouncer_collector(bouncer, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HIW_TEST_PGB_PASSWORD", PGB_PASSWORD)
    path = write(tmp_path, [{"name": "pgb", "type": "pgbouncer", "dsn": bouncer.dsn(),
                             "password_env": "HIW_TEST_PGB_PASSWORD"}])
    assert cli.main(["once", "--config", path, "--collector", "pgbouncer"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert 'hiw_pgbouncer_max_client_connections{target="pgb"} 100.0' in out
    assert "collector pgbouncer on target pgb" in err
    assert "plan: installed: PgBouncer 1." in err
    wait_for(lambda: bouncer.agent_clients() == 0, what="the once run's connection closed")


def test_once_with_a_collector_for_no_target_here(tmp_path, capsys):
    path = write(tmp_path, [{"name": "hiw", "dsn": "host=127.0.0.1 port=1 dbname=x"}])
    assert cli.main(["once", "--config", path, "--collector", "pgbouncer"]) == \
        cli.EXIT_COLLECTOR
    err = capsys.readouterr().err
    assert "collector pgbouncer runs on no target here: it reads PgBouncer's admin console" \
        in err



def write(tmp_path: Path, targets: list) -> str:
    path = tmp_path / "hiw.yaml"
    path.write_text(yaml.safe_dump({"targets": targets}))
    return str(path)


def test_a_pgbouncer_target_in_the_config(tmp_path):
    config = load(Overrides(config=write(tmp_path, [
        {"type": "pgbouncer", "host": "pgb.internal", "port": 6432, "user": "hiw_monitor",
         "password_env": "PGB_PASSWORD"},
        {"name": "pgb2", "type": "pgbouncer",
         "dsn": "postgresql://hiw_monitor@10.0.0.5:6432/pgbouncer?sslmode=disable",
         "password_file": "/run/secrets/pgb"},
        {"name": "hiw", "dsn": "postgresql://hiw_monitor@db:5432/heroes_in_waiting"},
    ])), environ={})
    first, second, third = config.targets
    assert (first.kind, first.name, first.password_env) == (
        "pgbouncer", "pgb.internal:6432/pgbouncer", "PGB_PASSWORD")
    assert "dbname=pgbouncer" in first.conninfo
    assert (second.kind, second.password_file) == ("pgbouncer", "/run/secrets/pgb")
    assert third.kind == "postgresql"

    # the pgbouncer collector runs on the PgBouncer targets only, the others never there
    jobs = {(t.name, name) for t, name in Agent(config).jobs()}
    assert {n for t, n in jobs if t in (first.name, "pgb2")} == set(PGBOUNCER_NAMES)
    assert {n for t, n in jobs if t == "hiw"} == \
        {s.name for s in config.enabled_collectors} - PGBOUNCER_NAMES


@pytest.mark.parametrize(("target", "where", "problem"), [
    ({"type": "pgbounce", "host": "h"}, "targets[0].type", "'pgbounce' is not a target type"),
    ({"type": "pgbouncer", "host": "h", "dbname": "hiw"}, "targets[0].dbname",
     "dbname 'hiw': a pgbouncer target reads PgBouncer's admin console"),
    ({"type": "pgbouncer", "dsn": "host=h port=6432 options='-c statement_timeout=1'"},
     "targets[0].dsn", "options is set"),
    ({"type": "pgbouncer", "dbname": "pgbouncer"}, "targets[0]",
     "a pgbouncer target needs a dsn or host"),
    ({"type": "pgbouncer", "host": "h", "password_env": "A", "password_file": "/b"},
     "targets[0]", "password_env and password_file are both set"),
])
def test_invalid_pgbouncer_targets_exit_2_with_the_key_path(tmp_path, capsys, target, where,
                                                             problem):
    assert cli.main(["validate-config", write(tmp_path, [target])]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{where}: {problem}" in err, err
    assert "Traceback" not in err


# --- the transform on another layout ------------------------------------------------------


def test_transform_tolerates_an_older_layout_and_bounds_pools():
    """PgBouncer 1.16's layout (cl_cancel_req, reserve_pool, no maxwait_us) and missing
    columns: what exists is exported, nothing is guessed."""
    pools = Result([
        {"database": "hiw", "user": "app", "cl_active": 5, "cl_waiting": 3, "cl_cancel_req": 0,
         "sv_active": 2, "sv_idle": 0, "sv_used": 0, "sv_tested": 0, "sv_login": 0,
         "maxwait": 2, "pool_mode": "transaction"},
        {"database": "hiw", "user": "reports", "cl_active": 1, "cl_waiting": 0,
         "cl_cancel_req": 0, "sv_active": 1, "sv_idle": 1, "sv_used": 0, "sv_tested": 0,
         "sv_login": 0, "maxwait": 0, "pool_mode": "transaction"},
        {"database": "analytics", "user": "app", "cl_active": 0, "cl_waiting": 0,
         "cl_cancel_req": 0, "sv_active": 0, "sv_idle": 0, "sv_used": 0, "sv_tested": 0,
         "sv_login": 0, "maxwait": 0, "pool_mode": "session"},
        {"database": "pgbouncer", "user": "pgbouncer", "cl_active": 1, "cl_waiting": 0,
         "cl_cancel_req": 0, "sv_active": 0, "sv_idle": 0, "sv_used": 0, "sv_tested": 0,
         "sv_login": 0, "maxwait": 0, "pool_mode": "statement"},
    ], ["database", "user", "cl_active", "cl_waiting", "cl_cancel_req", "sv_active", "sv_idle",
        "sv_used", "sv_tested", "sv_login", "maxwait", "pool_mode"])
    databases = Result([
        {"name": "hiw", "pool_size": 2, "reserve_pool": 1, "current_connections": 3},
        {"name": "analytics", "pool_size": 0, "reserve_pool": 0, "current_connections": 0},
        {"name": "pgbouncer", "pool_size": 2, "reserve_pool": 0, "current_connections": 0},
    ], ["name", "pool_size", "reserve_pool", "current_connections"])
    rows = {
        "pools": pools, "databases": databases,
        "stats": Result([{"database": "hiw", "total_xact_count": 10, "total_wait_time": 2_500_000}],
                        ["database", "total_xact_count", "total_wait_time"]),
        "lists": Result([{"list": "used_clients", "items": 7}], ["list", "items"]),
        "config": Result([{"key": "max_client_conn", "value": "200"},
                          {"key": "pool_mode", "value": "transaction"}], ["key", "value"]),
    }
    ctx = Context(target="t", server=ServerInfo(11600, "1.16.0", False), now=0.0,
                  options=MappingProxyType({"max_pools": 1, "max_databases": 1}))
    families = list(pgb.transform(rows, ctx))
    names = exposed(families)
    # present columns only: no maxwait_us (maxwait alone), no query counters, no settings
    # that SHOW CONFIG did not list
    assert "hiw_pgbouncer_queries_total" not in names
    assert "hiw_pgbouncer_default_pool_size" not in names
    assert "hiw_pgbouncer_database_paused" not in names
    hiw_app = {"database": "hiw", "user": "app"}
    assert series(families, "hiw_pgbouncer_pool_max_wait_seconds", **hiw_app) == 2
    assert series(families, "hiw_pgbouncer_pool_client_connections", **hiw_app,
                  state="cancel_req") == 0
    assert series(families, "hiw_pgbouncer_pool_saturation_ratio", **hiw_app) == 1
    # max_pools 1: the busiest pool alone, the rest summed under other/other
    other = {"database": "other", "user": "other"}
    assert series(families, "hiw_pgbouncer_pool_server_connections", **other,
                  state="idle") == 1
    assert series(families, "hiw_pgbouncer_pool_size", **other) == 2  # 2 + 0
    assert series(families, "hiw_pgbouncer_pool_size", database="pgbouncer") is None
    # max_databases 1: analytics (first by name) has its series, hiw is counted as omitted
    assert series(families, "hiw_pgbouncer_database_reserve_pool_size",
                  database="analytics") == 0
    assert series(families, "hiw_pgbouncer_database_server_connections", database="hiw") \
        is None
    assert series(families, "hiw_pgbouncer_databases_omitted") == 1
    assert series(families, "hiw_pgbouncer_client_wait_seconds_total") is None  # hiw omitted
    assert series(families, "hiw_pgbouncer_client_connections_utilization_ratio") == 7 / 200
    assert series(families, "hiw_pgbouncer_pool_mode", pool_mode="transaction") == 1
