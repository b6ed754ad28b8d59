"""A target is an instance: the per-database collectors (vacuum, indexes, bloat, the
review, custom collectors with ``per_database: true``) walk the databases the target
selects, each with a ``datname`` label, on at most ``max_connections`` connections to
the instance, one database at a time, each connection opened only while its database is
collected; new and dropped databases are followed; one database that refuses the agent
does not fail the others. Real PostgreSQL 15 and 18, real databases, real connections
counted in pg_stat_activity while the collections run.
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import agent_connections, http_get, running_agent, sample, wait_for
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from hiw_monitor.collect import DatabaseStates, run_collection
from hiw_monitor.collectors import ALL
from hiw_monitor.collectors.review import FindingsFamily
from hiw_monitor.config import Overrides, load
from hiw_monitor.scheduler import Agent

pytestmark = pytest.mark.integration

PER_DATABASE = ("vacuum", "indexes", "bloat", "review")


def make_databases(server) -> None:
    """app_a and app_b with a table each, a template, one refusing connections, and one
    the patterns exclude."""
    with server.admin("postgres") as admin:
        for name in ("app_a", "app_b", "skip_me"):
            admin.execute(f"CREATE DATABASE {name}")
        admin.execute("CREATE DATABASE tmpl_db IS_TEMPLATE true")
        admin.execute("CREATE DATABASE closed_db ALLOW_CONNECTIONS false")
    for name in ("app_a", "app_b"):
        with server.admin(name) as admin:
            admin.execute(f"CREATE TABLE {name}_items (id int PRIMARY KEY, note text)")
            admin.execute(f"INSERT INTO {name}_items SELECT g, 'x' FROM generate_series(1, 500) g")
            admin.execute(f"ANALYZE {name}_items")


def write_config(tmp_path: Path, server, *, databases: str | None = (
        "{include: ['*'], exclude: [postgres, 'skip_*']}"), max_connections: int | None = None,
        extra: str = "", collectors: tuple[str, ...] = PER_DATABASE) -> Path:
    (tmp_path / "pw").write_text(MONITOR_PASSWORD + "\n")
    settings = "\n".join(
        f"  {c.name}: {{interval: 1s, timeout: 10s}}" if c.name in collectors else
        f"  {c.name}: {{enabled: false}}" for c in ALL)
    lines = [f"  - name: inst\n    dsn: \"{server.monitor_dsn()}\"\n"
             f"    password_file: {tmp_path / 'pw'}"]
    if databases is not None:
        lines.append(f"    databases: {databases}")
    if max_connections is not None:
        lines.append(f"    max_connections: {max_connections}")
    path = tmp_path / "hiw.yaml"
    path.write_text("targets:\n" + "\n".join(lines) + "\ncollectors:\n" + settings + "\n"
                    + textwrap.dedent(extra))
    return path


def run(agent: Agent, collector: str):
    target = agent.targets[0]
    return run_collection(target, agent.collectors[collector],
                          agent.config.collectors[collector], agent.store,
                          agent.states.get((target.name, collector)))


def datnames(result, family: str | None = None) -> set[str]:
    return {s.labels["datname"] for f in result.families for s in f.samples
            if family is None or f.name == family}


def success(result) -> dict[str, float]:
    return {s.labels["datname"]: s.value for f in result.families for s in f.samples
            if f.name == "hiw_database_collection_success"}


class ConnectionSampler:
    """Watches how many connections the agent holds to the instance while the block runs:
    every few milliseconds, the target's connections that are open on the agent's side
    (``Target.connections_open``: a socket the agent has not closed). The server's view
    (pg_stat_activity) lags: a backend stays listed a moment after its client closed the
    connection, so it is used for what settles (none leaked), not for the peak."""

    def __init__(self, target) -> None:
        self.target = target
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.target.connections_open())
            self.samples += 1
            time.sleep(0.001)

    def __enter__(self) -> ConnectionSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_per_database_collectors_walk_the_selected_databases(own_pg, tmp_path):
    make_databases(own_pg)
    agent = Agent(load(Overrides(config=str(write_config(tmp_path, own_pg)))))
    try:
        wanted = {HIW_DB, "app_a", "app_b"}  # not: postgres, skip_me (excluded), templates
        for name in PER_DATABASE:
            result = run(agent, name)
            assert result.error is None, (name, result.error)
            assert datnames(result) == wanted, name
            assert success(result) == dict.fromkeys(wanted, 1.0), name
            for family in result.families:  # target first, then datname, on every series
                for s in family.samples:
                    assert list(s.labels)[:2] == ["target", "datname"], (name, s)
        vacuum = run(agent, "vacuum")
        tables = {(s.labels["datname"], s.labels.get("table")) for f in vacuum.families
                  for s in f.samples if f.name == "hiw_table_live_tuples"}
        assert ("app_a", "app_a_items") in tables
        assert ("app_b", "app_b_items") in tables
        assert ("app_a", "app_b_items") not in tables
        # the instance-wide database collector is not per-database: no datname walk
        assert not agent.collectors["database"].per_database
        # one state per database for the collectors that keep one (bloat, the review)
        states = agent.states[("inst", "bloat")]
        assert isinstance(states, DatabaseStates)
        assert len(states) == 3
    finally:
        agent.stop()


def test_new_and_dropped_databases_are_followed(own_pg, tmp_path):
    make_databases(own_pg)
    agent = Agent(load(Overrides(config=str(write_config(tmp_path, own_pg)))))
    try:
        assert datnames(run(agent, "vacuum")) == {HIW_DB, "app_a", "app_b"}
        with own_pg.admin("postgres") as admin:
            admin.execute("CREATE DATABASE app_c")
            # no connection of the agent's is left in app_b between runs: it drops at once
            admin.execute("DROP DATABASE app_b")
        result = run(agent, "vacuum")
        assert result.error is None
        assert datnames(result) == {HIW_DB, "app_a", "app_c"}
        assert set(agent.targets[0].databases) == {"app_a", "app_c"}  # app_b's closed
        bloat = run(agent, "bloat")
        assert datnames(bloat) == {HIW_DB, "app_a", "app_c"}
        assert len(agent.states[("inst", "bloat")]) == 3
    finally:
        agent.stop()


@pytest.mark.parametrize("bound", [2, 1])
def test_connections_stay_within_the_bound_and_close_when_idle(own_pg, tmp_path, bound):
    make_databases(own_pg)
    config = load(Overrides(config=str(write_config(tmp_path, own_pg, max_connections=bound))))
    agent = Agent(config)
    try:
        with ConnectionSampler(agent.targets[0]) as sampler:
            for _ in range(3):
                for name in PER_DATABASE:
                    assert run(agent, name).error is None
        assert sampler.samples > 50  # it watched the runs, not just their ends
        assert sampler.peak == bound  # a walk of 3 databases uses what it may, no more
        # between runs only the target's own connection stays open (none with bound 1
        # after a walk: it was closed for the others and reopens at the next run)
        with own_pg.admin("postgres") as admin:
            wait_for(lambda: agent_connections(admin) == (1 if bound > 1 else 0),
                     timeout=10, what="the per-database connections closed")
    finally:
        agent.stop()
    with own_pg.admin("postgres") as admin:
        wait_for(lambda: agent_connections(admin) == 0, timeout=10, what="none left")


def test_a_database_refusing_the_agent_fails_alone(own_pg, tmp_path):
    make_databases(own_pg)
    with own_pg.admin("postgres") as admin:
        admin.execute("REVOKE CONNECT ON DATABASE app_b FROM PUBLIC")
    agent = Agent(load(Overrides(config=str(write_config(tmp_path, own_pg)))))
    try:
        result = run(agent, "indexes")
        assert result.error is None
        assert success(result) == {HIW_DB: 1.0, "app_a": 1.0, "app_b": 0.0}
        assert datnames(result) - {"app_b"} == {HIW_DB, "app_a"}
        assert "app_b" not in datnames(result, "hiw_table_index_scans")
        with own_pg.admin("postgres") as admin:  # granted again: it comes back
            admin.execute("GRANT CONNECT ON DATABASE app_b TO PUBLIC")
        wait_for(lambda: success(run(agent, "indexes")).get("app_b") == 1.0, timeout=30,
                 what="app_b collected after its backoff")
    finally:
        agent.stop()


def test_no_matching_database_is_an_error_with_the_fix(own_pg, tmp_path):
    agent = Agent(load(Overrides(config=str(write_config(
        tmp_path, own_pg, databases="{include: ['nothing_*']}")))))
    try:
        result = run(agent, "vacuum")
        assert result.error is not None
        assert result.error.code == "no_databases"
        assert "nothing_*" in result.error.text
        assert "fix the patterns" in result.error.text
    finally:
        agent.stop()


def test_without_databases_only_the_dsn_database_with_its_datname(own_pg, tmp_path):
    make_databases(own_pg)
    agent = Agent(load(Overrides(config=str(write_config(tmp_path, own_pg, databases=None)))))
    try:
        for name in PER_DATABASE:
            result = run(agent, name)
            assert result.error is None
            assert datnames(result) == {HIW_DB}, name
        assert agent.targets[0].databases == {}  # never another connection
    finally:
        agent.stop()


def test_review_in_several_databases_scores_the_worst_of_each_check(own_pg, tmp_path):
    make_databases(own_pg)
    agent = Agent(load(Overrides(config=str(write_config(tmp_path, own_pg)))))
    try:
        result = run(agent, "review")
        assert result.error is None
        findings = next(f for f in result.families if isinstance(f, FindingsFamily)).findings
        ids = [f.check.id for f in findings]
        assert len(ids) == len(set(ids))  # one finding per check for the score
        by_id = {f.check.id: f for f in findings}
        # the app's RLS lives in heroes_in_waiting: its verdict wins over "unknown" in
        # the databases without the app's tables, and says where it comes from
        rls = by_id["rls_enabled"]
        assert rls.status in ("pass", "fail", "warn")
        assert rls.reason.startswith(f"in database {HIW_DB}: ")
        # every database's own status series is exported with its datname
        status = {(s.labels["datname"], s.labels["check"]) for f in result.families
                  for s in f.samples if f.name == "hiw_review_check_status"}
        assert {d for d, c in status if c == "rls_enabled"} == {HIW_DB, "app_a", "app_b"}
        (report,) = agent.health.report()
        scored = {f.check.id: f for f in report.findings}
        assert scored["rls_enabled"].status == rls.status  # the score uses the merged one
    finally:
        agent.stop()


def test_custom_collector_per_database_and_the_scrape(own_pg, tmp_path):
    make_databases(own_pg)
    extra = """\
        custom_collectors:
          - name: relations
            per_database: true
            interval: 1s
            sql: "SELECT count(*) AS tables FROM pg_catalog.pg_class WHERE relkind = 'r'"
            columns:
              tables: {usage: gauge, help: "Ordinary tables in the database."}
          - name: instance_backends
            interval: 1s
            sql: "SELECT count(*) AS backends FROM pg_catalog.pg_stat_activity"
            columns:
              backends: {usage: gauge, help: "Backends."}
        """
    config = load(Overrides(config=str(write_config(tmp_path, own_pg, extra=extra,
                                                    collectors=("vacuum",)))))
    with running_agent(config) as running:
        def scraped() -> str:
            return running.metrics()

        wait_for(lambda: sample(scraped(), "hiw_custom_relations_tables", datname="app_b")
                 is not None and sample(scraped(), "hiw_custom_instance_backends_backends")
                 is not None, timeout=60, what="both custom collectors scraped")
        text = scraped()
        for db in (HIW_DB, "app_a", "app_b"):
            assert sample(text, "hiw_custom_relations_tables", target="inst", datname=db) >= 1
        backends = [line for line in text.splitlines()
                    if line.startswith("hiw_custom_instance_backends_backends{")]
        assert len(backends) == 1
        assert "datname" not in backends[0]
        # the whole exposition, OpenMetrics, through the strict parser
        om = http_get(running.url + "/metrics",
                      {"Accept": "application/openmetrics-text; version=1.0.0"}).text
        families = {f.name for f in text_string_to_metric_families(om)}
        assert "hiw_database_collection_success" in families
