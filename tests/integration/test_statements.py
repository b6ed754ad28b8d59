"""The statements collector against real PostgreSQL 15 and 18 with real pgbench load."""

from __future__ import annotations

import re
import subprocess
from types import MappingProxyType

import pytest
from conftest import HIW_DB, MONITOR_PASSWORD, Server, start_server

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.collectors.statements import new_state
from hiw_monitor.config import CollectorSettings, load
from hiw_monitor.snapshot import SnapshotStore

pytestmark = pytest.mark.integration
DEFAULTS = load(environ={}, require_targets=False).collectors


def settings(**options) -> CollectorSettings:
    base = DEFAULTS["statements"]
    return CollectorSettings(name="statements", enabled=True, interval=base.interval,
                             timeout=base.timeout, stale_after=base.stale_after,
                             options=MappingProxyType({**base.options, **options}))


class Poller:
    """Runs the statements collector like the scheduler would, keeping its state."""

    def __init__(self, server: Server, **options) -> None:
        self.target = server.target("db")
        self.settings = settings(**options)
        self.state = new_state()
        self.store = SnapshotStore()
        self.store.register("db", self.target.redacted, "statements", 60, 180)
        for name in ("connections",):
            self.store.register("db", self.target.redacted, name, 60, 180)

    def poll(self):
        sample = run_collection(self.target, BY_NAME["statements"], self.settings, self.store,
                                self.state)
        assert sample.error is None, sample.error
        return {f.name: f for f in sample.families}

    def close(self) -> None:
        self.target.close()


def values(families, name, label="queryid"):
    return {s.labels.get(label): s.value for s in families[name].samples
            if s.name in (name, f"{name}_total")}


def histogram_count(families) -> float:
    return next(s.value for s in families["hiw_query_duration_seconds"].samples
                if s.name == "hiw_query_duration_seconds_count")


def pgbench(server: Server, script: str, *args: str) -> int:
    """Run pgbench as the superuser; returns the number of transactions processed."""
    result = subprocess.run(
        [str(server.cluster.binaries.bindir / "pgbench"), "-h", "127.0.0.1",
         "-p", str(server.cluster.port), "-U", "postgres", "-n", "-f", "-", *args, HIW_DB],
        input=script, capture_output=True, text=True, timeout=120, check=True)
    match = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return int(match.group(1))


def reset_statements(server: Server) -> None:
    with server.admin() as admin:
        admin.execute("SELECT pg_stat_statements_reset()")


def test_constant_latency_workload_gives_its_latency_and_exact_counts(pg):
    reset_statements(pg)
    poller = Poller(pg)
    try:
        poller.poll()  # baseline
        processed = pgbench(pg, "SELECT pg_sleep(0.02);\n", "-c", "2", "-t", "60")
        families = poller.poll()
    finally:
        poller.close()
    histogram = {s.labels["le"]: s.value for s in families["hiw_query_duration_seconds"].samples
                 if s.name.endswith("_bucket")}
    # every pgbench call counted exactly once; the agent's own queries are excluded
    assert histogram["+Inf"] == processed
    window = values(families, "hiw_query_latency_window_calls", "target")["db"]
    assert window == processed
    quantiles = values(families, "hiw_query_latency_seconds", "quantile")
    # pg_sleep(0.02) takes 20 ms plus scheduling noise (more on a loaded machine): the
    # estimate must sit inside what the server saw, the median near the server's mean
    with pg.admin() as admin:
        lo, hi, mean = admin.execute(
            "SELECT min_exec_time, max_exec_time, mean_exec_time FROM pg_stat_statements "
            "WHERE query LIKE 'SELECT pg_sleep%'").fetchone()
    # (a fitted shape may reach a little past the slowest call: one grid step and a tail)
    for q in ("0.5", "0.95", "0.99"):
        assert 0.0195 <= lo / 1000 * 0.99 <= quantiles[q] <= hi / 1000 * 1.1, quantiles
    assert abs(quantiles["0.5"] - mean / 1000) <= 0.1 * mean / 1000, (quantiles, mean)
    assert values(families, "hiw_sla_query_latency_met", "target")["db"] == 1
    assert values(families, "hiw_slow_statements", "target")["db"] == 0


def test_slow_statement_breaches_the_sla(pg):
    reset_statements(pg)
    poller = Poller(pg)
    try:
        poller.poll()
        pgbench(pg, "SELECT pg_sleep(0.15);\n", "-c", "2", "-t", "6")
        families = poller.poll()
    finally:
        poller.close()
    assert values(families, "hiw_sla_query_latency_met", "target")["db"] == 0
    assert values(families, "hiw_slow_statements", "target")["db"] == 1
    assert values(families, "hiw_query_latency_seconds", "quantile")["0.95"] > 0.1


def test_totals_stay_exact_and_monotone_through_a_reset(pg):
    reset_statements(pg)
    poller = Poller(pg, top_n=2)
    script = ("\\set r random(1, 4)\n"
              "SELECT count(*) FROM classrooms WHERE grade_level = :r;\n"
              "SELECT id FROM job_queue WHERE status = 'pending' LIMIT :r;\n"
              "SELECT count(*) FROM student_sessions WHERE is_active AND :r > 0;\n"
              "SELECT lesson_id FROM student_progress WHERE completed_at IS NULL LIMIT :r;\n")
    try:
        poller.poll()
        pgbench(pg, script, "-c", "2", "-t", "50")
        families = poller.poll()
        first = values(families, "hiw_statement_calls")
        assert len(first) == 3  # top 2 + other
        # the workload's calls exactly (the SLA scope leaves out only the agent itself) ...
        assert histogram_count(families) == 400
        # ... and the per-statement series hold them plus the agent's own few statements
        assert 400 <= sum(first.values()) <= 400 + 40
        reset_statements(pg)
        pgbench(pg, script, "-c", "1", "-t", "10")
        families = poller.poll()
        second = values(families, "hiw_statement_calls")
    finally:
        poller.close()
    for queryid, value in second.items():
        assert value >= first.get(queryid, 0.0)  # no negative jump across the reset
    # after the reset: 40 workload calls plus the reset call itself, nothing lost or doubled
    assert histogram_count(families) == 400 + 41
    # a statement that left the top N keeps its last value (its series just stops)
    last_values = {**first, **second}
    assert 41 <= sum(last_values.values()) - sum(first.values()) <= 41 + 40


def test_query_text_only_when_asked_and_never_for_utility(pg):
    reset_statements(pg)
    with pg.admin() as admin:
        admin.execute("VACUUM lessons")
        admin.execute("SELECT title FROM lessons WHERE lesson_number = 3")
    quiet = Poller(pg)
    chatty = Poller(pg, query_text=True, top_n=500)
    try:
        off = quiet.poll()
        on = chatty.poll()
    finally:
        quiet.close()
        chatty.close()
    assert "hiw_statement_query_info" not in off
    texts = {s.labels["query"] for s in on["hiw_statement_query_info"].samples}
    assert "SELECT title FROM lessons WHERE lesson_number = $1" in texts
    assert not any("VACUUM" in text.upper() for text in texts)
    assert not any("'" in text for text in texts)


def test_statement_metrics_have_their_families(pg):
    poller = Poller(pg)
    try:
        families = poller.poll()
    finally:
        poller.close()
    tracked = values(families, "hiw_statements_tracked", "target")["db"]
    assert tracked > 0
    assert values(families, "hiw_statements_max", "target")["db"] == 5000
    assert "hiw_statement_plan_seconds" in families  # track_planning is on in the fixtures
    assert "hiw_statement_io_read_seconds" in families  # track_io_timing is on


@pytest.mark.parametrize("version", ["pg15", "pg18"])
def test_missing_or_unusable_extension_says_what_to_run(version):
    server = start_server(version, settings={"shared_preload_libraries": "''"})
    try:
        with server.admin() as admin:
            admin.execute("CREATE ROLE outsider LOGIN PASSWORD 'outsider-pw'")
        store = SnapshotStore()
        target = server.target("db")
        for name in ("statements", "connections"):
            store.register("db", target.redacted, name, 60, 180)
        not_loaded = run_collection(target, BY_NAME["statements"], settings(), store,
                                    new_state())
        others = run_collection(target, BY_NAME["connections"], DEFAULTS["connections"], store)
        target.close()
        assert not_loaded.error.code == "not_preloaded"
        assert "shared_preload_libraries" in not_loaded.error.text
        assert others.error is None  # the rest keeps working

        server.cluster.stop()
        server.cluster.settings["shared_preload_libraries"] = "'pg_stat_statements'"
        with (server.cluster.datadir / "postgresql.conf").open("a") as conf:
            conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
        server.cluster.start()
        with server.admin() as admin:
            admin.execute("DROP EXTENSION pg_stat_statements")
        target = server.target("db")
        missing = run_collection(target, BY_NAME["statements"], settings(), store, new_state())
        target.close()
        assert missing.error.code == "extension_missing"
        assert "CREATE EXTENSION pg_stat_statements" in missing.error.text

        with server.admin() as admin:
            admin.execute("CREATE EXTENSION pg_stat_statements")
        from hiw_monitor.config import ConnectionSettings, TargetConfig
        from hiw_monitor.target import Target

        outsider = Target(TargetConfig("db", server.cluster.dsn(HIW_DB, user="outsider"),
                                       password="outsider-pw"), ConnectionSettings())
        denied = run_collection(outsider, BY_NAME["statements"], settings(), store, new_state())
        outsider.close()
        assert denied.error.code == "permission_denied"
        assert "GRANT pg_monitor TO outsider" in denied.error.text
        assert MONITOR_PASSWORD not in denied.error.text
    finally:
        server.cluster.destroy()


def transaction(query: str) -> str:
    """One application transaction as an ORM sends it: BEGIN, SET, SHOW, a query, COMMIT."""
    return ("BEGIN;\n"
            "SET LOCAL statement_timeout = '30s';\n"
            "SHOW transaction_isolation;\n"
            f"{query};\n"
            "COMMIT;\n")


def text_reads(server: Server) -> float:
    with server.admin() as admin:
        row = admin.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE query LIKE '%pg_stat_statements(true)%' AND query NOT LIKE '%LIKE%'"
        ).fetchone()
    return float(row[0])


def test_transactions_and_orm_chatter_leave_the_sla_to_the_application(pg):
    """90 queries at 2 ms and 10 at 150 ms (true p95: 150 ms), each inside BEGIN, SET,
    SHOW ... COMMIT, over the simple and the extended protocol: the SLA must be missed."""
    reset_statements(pg)
    poller = Poller(pg)
    try:
        poller.poll()
        fast = pgbench(pg, transaction("SELECT pg_sleep(0.002)"), "-c", "1", "-t", "90",
                       "-M", "simple")
        slow = pgbench(pg, transaction("SELECT 1 AS slow, pg_sleep(0.15)"), "-c", "1",
                       "-t", "10", "-M", "extended")
        families = poller.poll()
        for _ in range(2):  # the agent's own new statements are classified once, then ...
            poller.poll()
        reads = text_reads(pg)
        after = poller.poll()  # ... a poll with no new statement reads no query text
        assert text_reads(pg) == reads
    finally:
        poller.close()
    assert histogram_count(families) == fast + slow == 100
    excluded = values(families, "hiw_sla_excluded_calls", "reason")
    assert excluded["utility"] >= 4 * 100  # BEGIN, SET, SHOW, COMMIT per transaction
    assert values(families, "hiw_query_latency_seconds", "quantile")["0.95"] >= 0.1
    assert values(families, "hiw_sla_query_latency_met", "target")["db"] == 0
    # the per-statement counters still count the transaction control
    assert sum(values(after, "hiw_statement_calls").values()) >= 5 * 100


def test_exposition_is_strict_after_a_real_workload(pg, tmp_path):
    """After transactions and statement churn, the OpenMetrics body parses with the strict
    parser (whole bucket counts) and promtool accepts the text format."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as strict
    from tools import require

    from hiw_monitor.exposition import Exposition

    reset_statements(pg)
    poller = Poller(pg, top_n=5)
    churn = "".join(f"SELECT pg_sleep(0.001) AS churn_{i};\n" for i in range(12))
    try:
        poller.poll()
        pgbench(pg, transaction("SELECT pg_sleep(0.003)"), "-c", "2", "-t", "40")
        pgbench(pg, churn, "-c", "1", "-t", "3")
        poller.poll()
        pgbench(pg, "\\set r random(1, 1000)\nSELECT pg_sleep(:r / 100000.0);\n",
                "-c", "2", "-t", "100")
        poller.poll()
    finally:
        poller.close()
    exposition = Exposition(poller.store, prerender=False)
    body = exposition.get(openmetrics_format=True).body.decode()
    families = {f.name: f for f in strict(body)}
    buckets = [s.value for s in families["hiw_query_duration_seconds"].samples
               if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)
    assert buckets[-1] > 0
    text = exposition.get().body
    result = subprocess.run([require("promtool"), "check", "metrics"], input=text,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_another_server_behind_the_address_is_a_new_baseline_not_a_spike():
    """A failover or restore puts another server, with its own lifetime of counters,
    behind the target's address: nothing of that lifetime may be counted as an interval."""
    primary = start_server("pg15")
    replacement = start_server("pg15")
    script = "SELECT count(*) FROM classrooms WHERE grade_level = 3;\n"
    poller = None
    try:
        poller = Poller(primary)
        poller.poll()
        pgbench(primary, script, "-c", "1", "-t", "50")
        before = poller.poll()
        pgbench(replacement, script, "-c", "2", "-t", "500")  # the other server's history
        primary.cluster.stop()
        replacement.cluster.stop()
        with (replacement.cluster.datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {primary.cluster.port}\n")  # now behind the same address
        replacement.cluster.port = primary.cluster.port
        replacement.cluster.start()
        after = None
        for _ in range(10):  # the first runs find the old connection gone, then reconnect
            sample = run_collection(poller.target, BY_NAME["statements"], poller.settings,
                                    poller.store, poller.state)
            if sample.error is None:
                after = {f.name: f for f in sample.families}
                break
            poller.target._next_attempt = 0.0  # retry at once, no backoff wait
        assert after is not None
        assert histogram_count(after) == histogram_count(before)
        assert sum(values(after, "hiw_statement_calls").values()) == \
            sum(values(before, "hiw_statement_calls").values())
        assert values(after, "hiw_statements_resets_detected", "reason")["server_changed"] == 1
        pgbench(replacement, script, "-c", "1", "-t", "20")
        later = poller.poll()
        assert histogram_count(later) == histogram_count(before) + 20
    finally:
        if poller is not None:
            poller.close()
        primary.cluster.destroy()
        replacement.cluster.destroy()
