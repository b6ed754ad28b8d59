"""Collectors: pure transforms fed fake rows shaped by the collectors' own SQL, and
VersionedSQL selection."""

from __future__ import annotations

import math
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from hiw_monitor.collect import run_queries
from hiw_monitor.collectors import ALL, connections, database, indexes
from hiw_monitor.collectors.base import Context, ServerInfo, Step, VersionedSQL
from hiw_monitor.exposition import Exposition
from hiw_monitor.snapshot import SnapshotStore

TARGET = "hiw-primary"
SESSION_METRICS = {"hiw_database_sessions", "hiw_database_sessions_abandoned",
                   "hiw_database_sessions_fatal", "hiw_database_sessions_killed",
                   "hiw_database_session_seconds", "hiw_database_active_seconds",
                   "hiw_database_idle_in_transaction_seconds"}
CONFLICT_COLUMNS = ("datid", "datname", "confl_tablespace", "confl_lock", "confl_snapshot",
                    "confl_bufferpin", "confl_deadlock")


def select_columns(sql: str) -> list[str]:
    """The output column names of a single SELECT (aliases, else the bare column name)."""
    start = re.search(r"\bSELECT\b", sql, re.I)
    assert start is not None, sql
    text = sql[start.end():]
    items, depth, current = [], 0, ""
    for index, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and re.match(r"\bFROM\b", text[index:], re.I) and (
                index == 0 or not text[index - 1].isalnum()):
            break
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    names = []
    for item in items:
        alias = re.search(r"\bAS\s+(\w+)\s*$", item.strip(), re.I)
        names.append(alias.group(1) if alias else item.strip().rsplit(".", 1)[-1])
    return names


def ctx(version_num: int = 160004, **options) -> Context:
    server = ServerInfo(version_num=version_num, version=f"{version_num // 10000}.x",
                        in_recovery=False)
    return Context(target=TARGET, server=server, options=options, now=1_700_000_000.0)


def query(collector, name: str, version_num: int) -> str:
    sql = collector.queries[name].pick(version_num)
    assert sql is not None
    return sql


def row_for(columns, **values):
    """A row with every column of the query: ``values`` where given, else a distinct number."""
    missing = set(values) - set(columns)
    assert not missing, f"{missing} are not columns of the query"
    return {c: values.get(c, 1000 + i) for i, c in enumerate(columns)}


def by_name(families) -> dict:
    out = {}
    for family in families:
        assert family.name not in out, f"{family.name} yielded twice"
        out[family.name] = family
    return out


def samples(family) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def value_of(family, **labels) -> float:
    return samples(family)[tuple(sorted({"target": TARGET, **labels}.items()))]


def assert_target_label(families) -> None:
    for family in families:
        for sample in family.samples:
            assert sample.labels["target"] == TARGET, family.name


# --- database -----------------------------------------------------------------------------


def database_rows(version_num: int, databases=None, conflicts=None, checkpoints=None,
                  server=None) -> dict:
    db_cols = select_columns(query(database.COLLECTOR, "databases", version_num))
    cp_cols = select_columns(query(database.COLLECTOR, "checkpoints", version_num))
    sv_cols = select_columns(query(database.COLLECTOR, "server", version_num))
    return {
        "databases": databases if databases is not None else [
            row_for(db_cols, datname="hiw", blks_hit=90, blks_read=10, xid_age=1_000_000),
            row_for(db_cols, datname="postgres", blks_hit=0, blks_read=0, size_bytes=None),
        ],
        "conflicts": conflicts if conflicts is not None else [],
        "server": server or [row_for(sv_cols, in_recovery=False, freeze_max_age=200_000_000)],
        "checkpoints": checkpoints or [row_for(cp_cols)],
    }


def run_database(version_num: int, **rows):
    families = list(database.transform(database_rows(version_num, **rows), ctx(version_num)))
    assert_target_label(families)
    return by_name(families)


def test_checkpoint_sql_is_normalised_to_the_same_columns():
    before = select_columns(query(database.COLLECTOR, "checkpoints", 160000))
    after = select_columns(query(database.COLLECTOR, "checkpoints", 170000))
    assert before != []
    assert sorted(before) == sorted(after)
    assert "pg_stat_checkpointer" in query(database.COLLECTOR, "checkpoints", 170000)
    assert "pg_stat_checkpointer" not in query(database.COLLECTOR, "checkpoints", 160000)


@pytest.mark.parametrize("old", [130000, 150007, 160004])
def test_same_metric_names_before_and_after_pg17(old):
    # 14 added session statistics; apart from those, every version has the same names.
    expected = set(run_database(170002))
    if old < 140000:
        expected -= SESSION_METRICS
    assert set(run_database(old)) == expected


def test_checkpoint_values_and_scaling():
    cols = select_columns(query(database.COLLECTOR, "checkpoints", 170000))
    cp = row_for(cols, timed=7, requested=3, write_ms=1500, sync_ms=250, buffers_written=42)
    families = run_database(170000, checkpoints=[cp])
    checkpoints = families["hiw_checkpoints"]
    assert checkpoints.type == "counter"
    assert value_of(checkpoints, kind="timed") == 7
    assert value_of(checkpoints, kind="requested") == 3
    assert value_of(families["hiw_checkpoint_write_seconds"]) == pytest.approx(1.5)
    assert value_of(families["hiw_checkpoint_sync_seconds"]) == pytest.approx(0.25)
    assert value_of(families["hiw_checkpoint_buffers_written"]) == 42


def test_session_counters_only_when_the_columns_are_there():
    assert "sessions" not in select_columns(query(database.COLLECTOR, "databases", 130000))
    assert "sessions" in select_columns(query(database.COLLECTOR, "databases", 140000))
    assert not SESSION_METRICS & set(run_database(130000))
    assert set(run_database(140000)) >= SESSION_METRICS


def test_database_counters_and_ms_to_seconds():
    cols = select_columns(query(database.COLLECTOR, "databases", 160000))
    row = row_for(cols, datname="hiw", xact_commit=12, blk_read_time=2500.0,
                  session_time=60_000.0)
    families = run_database(160000, databases=[row])
    assert value_of(families["hiw_database_commits"], datname="hiw") == 12
    assert families["hiw_database_commits"].type == "counter"
    assert value_of(families["hiw_database_block_read_seconds"], datname="hiw") == (
        pytest.approx(2.5))
    assert value_of(families["hiw_database_session_seconds"], datname="hiw") == (
        pytest.approx(60.0))


def test_cache_hit_ratio():
    families = run_database(160000)
    ratio = families["hiw_database_cache_hit_ratio"]
    assert value_of(ratio, datname="hiw") == pytest.approx(0.9)
    assert len(ratio.samples) == 1  # postgres has no reads at all: no ratio, no division


def test_null_values_give_no_sample_and_no_error():
    # A NULL (no statistics row, no privilege) is no sample: never an exception, never NaN.
    cols = select_columns(query(database.COLLECTOR, "databases", 160000))
    locked = dict.fromkeys(cols) | {"datname": "locked"}
    families = run_database(160000, databases=[locked, row_for(cols, datname="hiw")])
    for name, family in families.items():
        for sample in family.samples:
            assert sample.labels.get("datname") != "locked", name
            assert not math.isnan(sample.value), name
    for name in ("hiw_database_commits", "hiw_database_size_bytes", "hiw_database_xid_age",
                 "hiw_database_xid_wraparound_ratio", "hiw_database_cache_hit_ratio"):
        assert [s.labels["datname"] for s in families[name].samples] == ["hiw"], name


def test_size_is_absent_without_connect_privilege():
    families = run_database(160000)
    size = families["hiw_database_size_bytes"]
    assert {s.labels["datname"] for s in size.samples} == {"hiw"}


@given(st.integers(min_value=0, max_value=2**31 - 1),
       st.integers(min_value=100_000, max_value=2_000_000_000))
def test_wraparound_and_freeze_ratios(xid_age, freeze_max_age):
    cols = select_columns(query(database.COLLECTOR, "databases", 160000))
    sv_cols = select_columns(query(database.COLLECTOR, "server", 160000))
    families = run_database(
        160000, databases=[row_for(cols, datname="hiw", xid_age=xid_age)],
        server=[row_for(sv_cols, in_recovery=True, freeze_max_age=freeze_max_age)])
    assert value_of(families["hiw_database_xid_wraparound_ratio"], datname="hiw") == (
        xid_age / 2**31)
    assert 0 <= value_of(families["hiw_database_xid_wraparound_ratio"], datname="hiw") < 1
    assert value_of(families["hiw_database_xid_freeze_ratio"], datname="hiw") == (
        pytest.approx(xid_age / freeze_max_age))
    assert value_of(families["hiw_database_xid_age"], datname="hiw") == xid_age
    assert value_of(families["hiw_server_in_recovery"]) == 1


def test_conflict_columns_become_reasons():
    row = dict(zip(CONFLICT_COLUMNS, [16384, "hiw", 1, 2, 3, 4, 5], strict=True))
    row["confl_active_logicalslot"] = 6  # PostgreSQL 16+
    row["confl_future"] = None  # NULL: no sample
    families = run_database(160000, conflicts=[row])
    conflicts = families["hiw_database_conflicts"]
    assert conflicts.type == "counter"
    got = {s.labels["reason"]: s.value for s in conflicts.samples}
    assert got == {"tablespace": 1, "lock": 2, "snapshot": 3, "bufferpin": 4, "deadlock": 5,
                   "active_logicalslot": 6}
    assert {s.labels["datname"] for s in conflicts.samples} == {"hiw"}


def test_server_facts():
    sv_cols = select_columns(query(database.COLLECTOR, "server", 160000))
    server = row_for(sv_cols, start_time=1_600_000_000.5, conf_load_time=1_600_000_100.0,
                     in_recovery=False)
    families = run_database(160000, server=[server])
    assert value_of(families["hiw_server_start_timestamp_seconds"]) == 1_600_000_000.5
    assert value_of(families["hiw_server_config_load_timestamp_seconds"]) == 1_600_000_100.0
    assert value_of(families["hiw_server_in_recovery"]) == 0


def test_no_databases_visible():
    families = run_database(160000, databases=[])
    assert families["hiw_database_size_bytes"].samples == []
    assert "hiw_checkpoints" in families


# --- connections ------------------------------------------------------------------------


def connection_rows(by_state=(), summary=None, waiting=(), applications=(), version=160000):
    summary_cols = select_columns(query(connections.COLLECTOR, "summary", version))
    return {
        "by_state": list(by_state),
        "summary": [summary or row_for(summary_cols, max_connections=100, reserved=3,
                                       client_backends=25, all_backends=31,
                                       oldest_xact_seconds=Decimal("12.5"),
                                       oldest_idle_xact_seconds=0)],
        "waiting": list(waiting),
        "applications": list(applications),
    }


def run_connections(top=10, **rows):
    families = list(connections.transform(connection_rows(**rows), ctx(top_applications=top)))
    assert_target_label(families)
    return by_name(families)


def test_fake_rows_match_the_connection_sql():
    assert select_columns(query(connections.COLLECTOR, "by_state", 160000)) == [
        "datname", "state", "n"]
    assert select_columns(query(connections.COLLECTOR, "waiting", 160000)) == [
        "wait_event_type", "n"]
    assert select_columns(query(connections.COLLECTOR, "applications", 160000)) == [
        "application_name", "n"]
    assert select_columns(query(connections.COLLECTOR, "summary", 130000)) == select_columns(
        query(connections.COLLECTOR, "summary", 160000))


def test_states_are_zero_filled_per_database():
    families = run_connections(by_state=[
        {"datname": "hiw", "state": "active", "n": 4},
        {"datname": "hiw", "state": "idle", "n": 2},
        {"datname": "postgres", "state": "idle", "n": 1},
    ])
    got = {(s.labels["datname"], s.labels["state"]): s.value
           for s in families["hiw_connections"].samples}
    for datname in ("hiw", "postgres"):
        for state in connections.STATES:
            assert (datname, state) in got
    assert got[("hiw", "active")] == 4
    assert got[("hiw", "idle in transaction")] == 0
    assert got[("postgres", "active")] == 0
    assert len(got) == 2 * len(connections.STATES)


def test_unusual_states_are_kept():
    families = run_connections(by_state=[{"datname": "hiw", "state": "unknown", "n": 1}])
    got = {s.labels["state"]: s.value for s in families["hiw_connections"].samples}
    assert got["unknown"] == 1
    assert set(connections.STATES) <= set(got)


def test_always_present_wait_types():
    quiet = run_connections()["hiw_sessions_waiting"]
    got = {s.labels["wait_event_type"]: s.value for s in quiet.samples}
    assert got == dict.fromkeys(connections.ALWAYS_WAIT_TYPES, 0.0)
    busy = run_connections(waiting=[{"wait_event_type": "Lock", "n": 3},
                                    {"wait_event_type": "Client", "n": 2}])
    got = {s.labels["wait_event_type"]: s.value for s in busy["hiw_sessions_waiting"].samples}
    assert got["Lock"] == 3
    assert got["Client"] == 2
    assert set(connections.ALWAYS_WAIT_TYPES) <= set(got)


def test_applications_top_n_and_other():
    apps = [{"application_name": name, "n": n}
            for name, n in [("web", 50), ("worker", 20), ("psql", 3), ("cron", 2), ("", 1)]]
    families = run_connections(top=2, applications=apps)
    got = {s.labels["application_name"]: s.value
           for s in families["hiw_connections_by_application"].samples}
    assert got == {"web": 50, "worker": 20, "other": 6}
    everything = run_connections(top=10, applications=apps)
    got = {s.labels["application_name"]: s.value
           for s in everything["hiw_connections_by_application"].samples}
    assert got["(none)"] == 1  # an empty application_name gets a readable label
    assert sum(got.values()) == 76


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=10_000))
def test_utilization_ratio(clients, max_connections):
    summary_cols = select_columns(query(connections.COLLECTOR, "summary", 160000))
    summary = row_for(summary_cols, max_connections=max_connections, client_backends=clients)
    families = run_connections(summary=summary)
    assert value_of(families["hiw_connections_utilization_ratio"]) == (
        clients / max_connections)
    assert value_of(families["hiw_connections_max"]) == max_connections


def test_summary_values():
    families = run_connections()
    assert value_of(families["hiw_connections_reserved"]) == 3
    assert value_of(families["hiw_backends"]) == 31
    assert value_of(families["hiw_oldest_transaction_age_seconds"]) == 12.5
    assert value_of(families["hiw_oldest_idle_in_transaction_age_seconds"]) == 0


def test_zero_max_connections_does_not_divide():
    summary_cols = select_columns(query(connections.COLLECTOR, "summary", 160000))
    families = run_connections(summary=row_for(summary_cols, max_connections=0))
    assert value_of(families["hiw_connections_utilization_ratio"]) == 0


def test_transform_output_renders_as_valid_openmetrics():
    store = SnapshotStore()
    for collector, rows in ((database.COLLECTOR, database_rows(160000)),
                            (connections.COLLECTOR, connection_rows(
                                by_state=[{"datname": "hiw", "state": "active", "n": 1}]))):
        store.register(TARGET, "host=h", collector.name, collector.interval, 1e12)
        store.record_success(TARGET, collector.name,
                             list(collector.transform(rows, ctx(top_applications=10))), 0.0, 0.1)
    body = Exposition(store, clock=lambda: 1.0).get(openmetrics_format=True).body.decode()
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"hiw_connections", "hiw_checkpoints", "hiw_database_commits"} <= names


# --- VersionedSQL --------------------------------------------------------------------------

versions = st.integers(min_value=130000, max_value=189999)


@given(st.sets(st.integers(min_value=130000, max_value=189999), min_size=1, max_size=5),
       versions)
def test_pick_uses_the_highest_minimum_at_or_below(minimums, version):
    sql = VersionedSQL({m: f"sql-{m}" for m in minimums})
    eligible = [m for m in minimums if m <= version]
    expected = f"sql-{max(eligible)}" if eligible else None
    assert sql.pick(version) == expected
    assert set(sql.variants) == {f"sql-{m}" for m in minimums}


@given(versions)
def test_pick_boundaries_of_the_real_collectors(version):
    summary = connections.COLLECTOR.queries["summary"].pick(version)
    assert (summary == connections._SUMMARY_16) == (version >= 160000)
    assert (summary == connections._SUMMARY) == (version < 160000)
    checkpoints = database.COLLECTOR.queries["checkpoints"].pick(version)
    assert (checkpoints == database._CHECKPOINTS_17) == (version >= 170000)
    dbs = database.COLLECTOR.queries["databases"].pick(version)
    assert (dbs == database._DATABASES_14) == (version >= 140000)


@pytest.mark.parametrize("collector", ALL, ids=lambda c: c.name)
def test_every_query_has_sql_from_the_minimum_version(collector):
    planned = collector.plan.queries if collector.plan else {}
    for name, query in {**collector.declared(), **planned}.items():
        if isinstance(query.sql, VersionedSQL):  # (a builder composes it from the plan)
            assert query.sql.pick(collector.min_version) is not None, name
            assert query.sql.pick(collector.min_version - 1) is None, name


def test_pick_exact_edges():
    sql = VersionedSQL({130000: "A", 170000: "B"})
    assert (sql.pick(129999), sql.pick(130000), sql.pick(169999), sql.pick(170000)) == (
        None, "A", "A", "B")
    assert ServerInfo(170002, "17.2", in_recovery=False).major == 17


# --- indexes: declared queries, each depending on the options or the rows before it -------


def index_columns() -> list[str]:
    text = indexes.COLLECTOR.queries["indexes"].sql.pick(150000)
    return select_columns(text[text.index("\nSELECT"):])  # the query after the CTE


def index_row(oid: int, name: str, **values):
    row = row_for(index_columns(), oid=oid, schema="public", table="t", index=name,
                  idx_scan=0, indisunique=False, indisprimary=False, indisvalid=True,
                  indisready=True, constraint_backed=False, locked=False,
                  signature=f"sig-{oid}")
    row.update(values)
    return row


def index_step(rows=None, **options) -> Step:
    chosen = {name: option.default for name, option in indexes.OPTIONS.items()} | options
    return Step(chosen, ServerInfo(150000, "15.0", in_recovery=False), rows=rows or {})


class RecordingCursor:
    """Answers every statement with no rows and remembers what was run: enough to see
    which declared queries run and with which parameters."""

    description = ()

    def __init__(self) -> None:
        self.ran: list[tuple[str, object]] = []

    def execute(self, text, params=None) -> None:
        self.ran.append((text.decode() if isinstance(text, bytes) else str(text), params))

    def fetchall(self) -> list:
        return []


def test_index_sizes_are_asked_only_for_listed_candidates():
    rows = [index_row(3, "unused_b"), index_row(1, "unused_a"),
            index_row(2, "scanned", idx_scan=5),
            index_row(4, "locked", locked=True, signature=None),
            index_row(5, "pk", indisprimary=True, indisunique=True, constraint_backed=True,
                      signature="same", idx_scan=9),
            index_row(6, "pk_twin", signature="same", idx_scan=9)]
    sizes = indexes.COLLECTOR.declared()["sizes"]
    assert sizes.params is not None
    assert sizes.params(index_step({"indexes": rows})) == {"oids": [1, 3, 6]}
    assert sizes.params(index_step({"indexes": rows[2:3]})) is None  # none: not run
    assert sizes.params(index_step({"indexes": []})) is None


def test_expected_indexes_are_queried_only_when_configured():
    expected = indexes.COLLECTOR.declared()["expected"]
    assert expected.params is not None
    assert expected.params(index_step(expected=())) is None
    chosen = indexes.parse_expected({"idx_a": {"table": "t"},
                                     "idx_b": {"table": "u", "schema": "app"}})
    assert expected.params(index_step(expected=chosen)) == {
        "names": ["idx_a", "idx_b"], "schemas": ["public", "app"], "tables": ["t", "u"]}


def test_index_queries_run_in_order_and_skip_what_is_not_needed():
    assert list(indexes.COLLECTOR.declared()) == [
        "indexes", "sizes", "seq_scans", "seq_scan_count", "expected", "stats_reset"]
    assert indexes.COLLECTOR.fetch is None
    cur = RecordingCursor()
    rows = run_queries(cur, indexes.COLLECTOR.declared(), index_step(expected=()))
    assert rows == {name: [] for name in indexes.COLLECTOR.declared()}
    ran = [text for text, _ in cur.ran]
    assert len(ran) == 4  # no candidates: no sizes; nothing expected: no expected query
    assert "pg_stat_user_indexes" in ran[0]
    assert "pg_relation_size" not in " ".join(ran)
    assert "unnest" not in " ".join(ran)
    params = [p for _, p in cur.ran[1:3]]
    assert params == [{"min_rows": 10_000, "min_scans": 100, "limit": 50}] * 2


def test_index_transform_on_rows_shaped_by_the_sql():
    rows = {"indexes": [index_row(1, "unused_a"), index_row(2, "unused_b"),
                        index_row(3, "broken", indisvalid=False, idx_scan=4)],
            "sizes": [{"oid": 1, "size_bytes": 8192}, {"oid": 2, "size_bytes": None}],
            "seq_scans": [], "seq_scan_count": [{"n": 0}], "expected": [],
            "stats_reset": [{"stats_reset": 1_699_000_000.0}]}
    options = {name: option.default for name, option in indexes.OPTIONS.items()}
    families = by_name(indexes.transform(rows, ctx(**options)))
    assert_target_label(families.values())
    assert samples(families["hiw_index_unused_size_bytes"]) == {
        (("index", "unused_a"), ("schema", "public"), ("table", "t"), ("target", TARGET)): 8192}
    assert value_of(families["hiw_unused_indexes"]) == 1
    assert value_of(families["hiw_indexes_locked_relations_skipped"]) == 1  # unused_b
    assert value_of(families["hiw_invalid_indexes"]) == 1
    assert value_of(families["hiw_index_stats_reset_timestamp_seconds"]) == 1_699_000_000.0
